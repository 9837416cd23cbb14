"""The network: timm backbone + Query2Label head with the BatchFormerV2 branch (paper §1)."""

from mlic.models.build import MultiLabelClassifier, build_model, build_model_from_config

__all__ = ["MultiLabelClassifier", "build_model", "build_model_from_config"]
