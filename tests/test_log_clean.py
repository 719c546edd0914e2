"""The train screen's worker-log tail as a person reads it (issue 28, finding 9)."""

from screens.train import clean_log


def test_ansi_stripped_progress_bar_kept_at_its_end_warnings_folded():
    lines = ["\x1b[1m* Trackio project initialized\x1b[0m", "\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\",
             "/venv/transformers/x.py:12: FutureWarning: `foo` is deprecated", "  warnings.warn(",
             "/venv/torch/y.py:3: UserWarning: bar", "  return f()", "shards 10%\rshards 100%", "step 5 done"]
    out = clean_log(lines)
    assert out == ["* Trackio project initialized", "link", "shards 100%", "step 5 done",
                   "(2 library warnings folded; stdout.log has them)"]
    assert not any("\x1b" in line for line in out)
    assert clean_log(["a", "b"]) == ["a", "b"]
