"""The Textual app (`autoft` with no arguments, `autoft tui`): a thin shell over the core.

    app.py        AutoftApp, create_app(services=None, answers=None)
    services.py   Services (the core functions it calls; fakes in tests) and Answers (the one
                  state object; answers -> `autoft run` argv -> Question by the CLI's own flags)
    screens/      the six steps (data, task, hardware, recommend, run, results) and dialogs
    widgets.py    MemoryBar, PathSuggester
    app.tcss      the one stylesheet

Only this package imports textual; nothing in autoft.advisor or autoft.autotrain imports it.
"""
