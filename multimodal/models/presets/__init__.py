"""Named whole-model presets (YAML files read by `multimodal.models.factories`; a package so they ship as data)."""
