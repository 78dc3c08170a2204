#!/bin/sh
# The image's entrypoint. Arguments that start with "-" (the image's CMD, or whatever follows the
# image name in `docker run`) are app.py flags, added after the container's fixed ones (they may
# override them: argparse keeps the last): e.g. `--model google/gemma-3-4b-it --4bit`.
# Anything else is a command run instead of the app: `steerheal run ...`, `bash bench/gpu_check.sh`.
set -eu

if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
  exec "$@"
fi

# Gated models (gemma-3) download only with a token: say so before the app starts, not after a 401.
model=bundled
want_model=0
for arg in "$@"; do
  if [ "$want_model" = 1 ]; then model=$arg; want_model=0; continue; fi
  case $arg in
    --model) want_model=1 ;;
    --model=*) model=${arg#--model=} ;;
  esac
done
case $model in
  bundled | /* | ./* | ../* | ~*) ;;
  *)
    if [ -z "${HF_TOKEN:-}" ] && [ ! -s "${HF_HOME:-/data/hf-cache}/token" ] && [ "${HF_HUB_OFFLINE:-0}" != 1 ]; then
      echo "steerheal: note: HF_TOKEN is not set. $model downloads only if it is public; gated models" \
        "(google/gemma-3-4b-it) need your token: docker run -e HF_TOKEN=hf_... (accept the model's licence on" \
        "huggingface.co first)." >&2
    fi
    ;;
esac

exec python3 /app/app.py --host 0.0.0.0 --port 7860 --db /data/runs.db "$@"
