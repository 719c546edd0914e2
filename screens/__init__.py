"""One module per screen, plus small widgets. Views of engine state: no business logic, never imports carl_tui."""
