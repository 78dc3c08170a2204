class SteerhealError(Exception):
    """An error the user can fix. The message says what to change.

    The CLI prints it as one line and exits with code 2; the UI shows it as a gr.Error.
    """
