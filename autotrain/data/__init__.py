"""The data layer: read a data set, infer the task, normalise and validate it, cut missing splits,
and profile it for the advisor. No torch or transformers at import (a tokenizer is passed in).

    from autoft.autotrain.data import load_data, build_profile
    bundle = load_data("data/")              # file, folder, save_to_disk folder or Hub id
    profile = build_profile(bundle)           # or build_profile(bundle, tokenizer)
    profile.to_question_fields()              # {"task": ..., "data_size": ..., ...}
"""
from autoft.autotrain.data.load import SPLITS, DataBundle, load_data
from autoft.autotrain.data.profile import DataProfile, build_profile, detect_language
from autoft.autotrain.data.readers import FORMATS, SUPPORTED

__all__ = ["DataBundle", "DataProfile", "FORMATS", "SPLITS", "SUPPORTED", "build_profile",
           "detect_language", "load_data"]
