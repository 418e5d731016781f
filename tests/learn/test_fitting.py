import sys

import keras
import numpy as np
import pytest

from vsearch.errors import TrainingError, VSearchError
from vsearch.learn.fitting import StopOnNonFiniteLoss, Timings, fit_verbosity


def _regression(x: np.ndarray) -> tuple[keras.Model, np.ndarray]:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    return model, np.zeros((len(x), 1), np.float32)


def test_a_non_finite_loss_stops_fit_with_a_training_error():
    x = np.ones((12, 3), np.float32)
    x[7] = np.nan  # in the second batch of four
    model, y = _regression(x)
    guard = StopOnNonFiniteLoss("test stage", "lower the learning rate")
    with pytest.raises(
        TrainingError,
        match=r"test stage: the loss became nan at epoch 1, batch 2; "
        r"stopped without saving a model or metrics \(lower the learning rate\)",
    ):
        model.fit(x, y, batch_size=4, epochs=3, shuffle=False, callbacks=[guard], verbose=0)
    assert issubclass(TrainingError, VSearchError)  # the CLI prints one line and exits 2


def test_an_infinite_loss_is_caught_too_and_a_finite_one_is_left_alone():
    x = np.ones((8, 3), np.float32)
    model, y = _regression(x)
    history = model.fit(x, y, batch_size=4, epochs=2, callbacks=[StopOnNonFiniteLoss("s", "r")], verbose=0)
    assert len(history.history["loss"]) == 2
    x[5] = 3e38  # squared: inf
    with pytest.raises(TrainingError, match="became inf at epoch 1, batch 2"):
        model.fit(x, y, batch_size=4, epochs=1, shuffle=False, callbacks=[StopOnNonFiniteLoss("s", "r")], verbose=0)


def test_progress_bars_only_on_a_terminal(monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    assert fit_verbosity(print) == 2  # a log file: one plain line per epoch
    assert fit_verbosity(print, line_per_epoch=False) == 0  # the stage writes its own line
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    assert fit_verbosity(print) == 1 and fit_verbosity(print, line_per_epoch=False) == 1
    assert fit_verbosity([].append) == 0  # logging elsewhere: Keras stays quiet


def test_timings_add_up_repeated_steps(monkeypatch):
    import vsearch.learn.fitting as training

    clock = iter([0.0, 1.5, 10.0, 12.0, 20.0, 20.25])
    monkeypatch.setattr(training.time, "perf_counter", lambda: next(clock))
    timings = Timings()
    for key in ("fit_s", "fit_s", "eval_s"):
        with timings(key):
            pass
    assert timings == {"fit_s": 3.5, "eval_s": 0.25}
