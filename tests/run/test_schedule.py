"""Learning-rate multipliers, computed by hand."""

import math

import pytest

from gradascent.run.schedule import lr_multiplier


def test_warmup_then_decay_by_hand():
    # Warm-up of 4 steps: (step + 1) / 4.
    assert [lr_multiplier(s, 14, 4, "cosine") for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    # After warm-up, progress p = (step - 4) / 10. Cosine at p = 0.5: (1 + cos(pi/2)) / 2 = 0.5.
    assert lr_multiplier(9, 14, 4, "cosine") == pytest.approx(0.5)
    # With min_ratio 0.1: 0.1 + 0.9 * 0.5 = 0.55; at the end (p = 1): 0.1.
    assert lr_multiplier(9, 14, 4, "cosine", min_ratio=0.1) == pytest.approx(0.55)
    assert lr_multiplier(14, 14, 4, "cosine", min_ratio=0.1) == pytest.approx(0.1)
    # Linear at p = 0.3: 1 - 0.3 = 0.7; constant stays 1; past the end the schedule holds its last value.
    assert lr_multiplier(7, 14, 4, "linear") == pytest.approx(0.7)
    assert lr_multiplier(100, 14, 0, "constant") == 1.0
    assert lr_multiplier(100, 14, 4, "linear") == pytest.approx(0.0)
    assert lr_multiplier(4, 14, 4, "cosine") == pytest.approx((1 + math.cos(0.0)) / 2)
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_multiplier(5, 10, 0, "step")  # type: ignore[arg-type]


def test_a_warmup_longer_than_the_run_is_warned_about():
    import warnings

    import pytest

    from gradascent.errors import GradascentWarning
    from gradascent.run.schedule import warn_short_warmup

    # 30 steps of a 50-step warm-up: the last step's multiplier is 30 / 50, so the peak is 0.6 * 3e-3
    with pytest.warns(GradascentWarning, match=r"warmup_steps=50 is longer than the run's 30 optimizer steps: the "
                                                r"learning rate rises only to 0\.0018, not to the 0\.003 asked for"):
        warn_short_warmup(50, 30, 3e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_short_warmup(50, 50, 3e-3)  # reaches the peak at its last step: no warning
        warn_short_warmup(0, 10, 3e-3)
