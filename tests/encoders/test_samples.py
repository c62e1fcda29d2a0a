"""Raw samples to arrays (`encoders.samples`): bounded resampling rates and cutting a clip before resampling."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from encoders.audio import load_waveforms, resample
from encoders.samples import MAX_RESAMPLE_FACTOR, bounded_rate, input_span


@pytest.mark.parametrize("rate", [8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000, 192000])
def test_common_rates_are_resampled_exactly(rate):
    assert bounded_rate(rate, 16000) == rate
    assert bounded_rate(rate, 22050) == rate


@pytest.mark.parametrize("rate", [16001, 7919, 44101, 191999, 12347])
def test_odd_rates_move_to_a_near_rate_with_small_factors(rate):
    near = bounded_rate(rate, 16000)
    g = math.gcd(near, 16000)
    assert near // g <= MAX_RESAMPLE_FACTOR and 16000 // g <= MAX_RESAMPLE_FACTOR
    assert abs(near - rate) <= rate // 100


def test_a_coprime_rate_resamples_in_bounded_time():
    """16001 Hz -> 16000 Hz built a 16000 x 16001 filter bank (> 3.7 GB) in torchaudio; now it is a copy."""
    wave = np.random.default_rng(0).standard_normal(32000).astype(np.float32)
    start = time.process_time()
    out = load_waveforms([(wave, 16001), (wave, 7919)], 16000, None)
    assert time.process_time() - start < 5.0
    assert out[0].shape == (32000,) and abs(out[1].shape[0] - 32000 * 16000 / bounded_rate(7919, 16000)) <= 1
    np.testing.assert_array_equal(out[0], wave)


@pytest.mark.parametrize("orig", [44100, 8000, 48000, 22050, 11025])
def test_cutting_before_resampling_keeps_the_first_samples(orig):
    """Equal up to float rounding (the convolution blocks a shorter input differently: 1 ulp at most)."""
    wave = np.random.default_rng(1).standard_normal(orig * 3).astype(np.float32)
    max_len = 16000  # one second at the target rate
    full = resample(wave, orig, 16000)[:max_len]
    cut = resample(wave[: input_span(max_len, orig, 16000)], orig, 16000)[:max_len]
    np.testing.assert_allclose(cut, full, rtol=0, atol=1e-6)
    np.testing.assert_allclose(load_waveforms([(wave, orig)], 16000, 1.0)[0], full, rtol=0, atol=1e-6)
    np.testing.assert_allclose(cut[-500:], full[-500:], rtol=0, atol=1e-6)  # the end too, where a short cut would show
