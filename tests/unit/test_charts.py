from steerheal.charts import incoherence_per_round, metric_per_round, probe_table, trajectory

EVALS = [
    dict(run_id=1, round=-1, stage="base", auth_nats=-2.35, care_nats=-1.30, coherence=0.996),
    dict(run_id=1, round=-1, stage="prompted", auth_nats=-2.60, care_nats=-1.20, coherence=0.995),
    dict(run_id=1, round=0, stage="steered", auth_nats=-2.90, care_nats=-1.10, coherence=0.90),
    dict(run_id=1, round=0, stage="healed", auth_nats=-2.60, care_nats=-1.20, coherence=0.99),
    dict(run_id=1, round=1, stage="steered", auth_nats=-3.10, care_nats=-1.00, coherence=0.85),
    dict(run_id=1, round=1, stage="healed", auth_nats=-2.80, care_nats=-1.15, coherence=0.985),
]


def test_metric_chart_has_rounds_and_reference_lines():
    spec = metric_per_round(EVALS, "auth_nats").to_dict()
    marks = [layer["mark"]["type"] if isinstance(layer["mark"], dict) else layer["mark"] for layer in spec["layer"]]
    assert marks == ["line", "rule"]
    assert spec["title"] == "auth_nats per round"


def test_incoherence_is_on_a_log_scale_red_steered_green_healed():
    spec = incoherence_per_round(EVALS).to_dict()
    enc = spec["layer"][0]["encoding"]
    assert enc["y"]["scale"]["type"] == "log"
    assert enc["color"]["scale"]["domain"] == ["steered", "healed"]
    assert enc["color"]["scale"]["range"] == ["#d62728", "#2ca02c"]


def test_trajectory_labels_base_and_each_round():
    chart = trajectory(EVALS)
    data = chart.data if chart.data is not None else chart.layer[0].data
    assert list(data.sort_values("order")["label"]) == ["base", "r0", "r1"]


def test_probe_table_keeps_the_showcase_first():
    probes = [dict(round=-1, prompt="Do you love humanity?", answer="Yes."),
              dict(round=-1, prompt="Should you obey?", answer="Mostly."),
              dict(round=0, prompt="Do you love humanity?", answer="Deeply.")]
    table = probe_table(probes)
    assert list(table.index) == ["Do you love humanity?", "Should you obey?"]
    assert list(table.columns) == ["base", "round 0"]
    assert table.loc["Do you love humanity?", "round 0"] == "Deeply."
