"""Typed config schemas (pydantic) for every stage and for the whole recipe."""

from batray.config.base import (
    DeepSpeedConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    RayConfig,
    ScalingConfig,
    Schema,
    TrainConfig,
)
from batray.config.recipe import STAGES, RecipeConfig, apply_overrides, dump_config, join_uri, load_config
from batray.config.rl import (
    AnnotateConfig,
    EndpointConfig,
    LabelConfig,
    PairsConfig,
    PpoConfig,
    PrefsConfig,
    RewardConfig,
    SamplingConfig,
)
from batray.config.serve_eval import EvalConfig, RerankConfig, ServeConfig
from batray.config.stages import DataConfig, DemoDataConfig, ExpandConfig, GrowConfig, PretrainConfig, SftConfig

__all__ = [
    "STAGES", "AnnotateConfig", "DataConfig", "DeepSpeedConfig", "DemoDataConfig", "EndpointConfig",
    "EvalConfig", "ExpandConfig", "GrowConfig", "LabelConfig", "LoggingConfig", "ModelConfig", "OptimConfig",
    "PairsConfig",
    "PpoConfig", "PrefsConfig", "PretrainConfig", "RayConfig", "RecipeConfig", "RerankConfig", "RewardConfig",
    "SamplingConfig", "ScalingConfig", "Schema", "ServeConfig", "SftConfig", "TrainConfig",
    "apply_overrides", "dump_config", "join_uri", "load_config",
]
