"""Deprecated: the exported folder's numpy preprocessing lives in `multimodal.deploy.runtime.preprocess`, and its
``ImagePreprocessor`` is now ``NumpyImagePreprocessor`` (``encoders.image.ImagePreprocessor`` is the torch one);
the old names keep working for one release with a DeprecationWarning."""

from multimodal.deprecation import relocated

_HOME = "multimodal.deploy.runtime.preprocess"
__getattr__ = relocated(__name__, {
    **{name: _HOME for name in ("PIL_FILTERS", "NumpyPreprocessor", "TokenizerPreprocessor", "resized_size",
                                "center_crop_box", "sinc_kernel", "resample", "waveforms", "WaveformPreprocessor",
                                "Wav2Vec2Preprocessor", "build_preprocessor")},
    "ImagePreprocessor": f"{_HOME}:NumpyImagePreprocessor",
})
