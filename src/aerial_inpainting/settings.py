"""Project settings: the config loader, and the project's hooks."""

from kedro.config import OmegaConfigLoader

from aerial_inpainting.hooks import DataSourceHook

# kedro-mlflow registers its own hook through its plugin entry point.
HOOKS = (DataSourceHook(),)

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "config_patterns": {
        "parameters": ["parameters*", "parameters*/**", "**/parameters*"],
        "mlflow": ["mlflow*", "mlflow*/**"],
    },
    # An environment (conf/gpu, conf/cpu_real) lists only the parameters it changes: nested
    # keys are merged into conf/base's rather than replacing whole top-level blocks.
    "merge_strategy": {"parameters": "soft"},
}
