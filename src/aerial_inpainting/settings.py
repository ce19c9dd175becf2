"""Project settings: the config loader, and the project's hooks."""

import logging
import warnings

from aerial_inpainting.hooks import (
    MlflowRunHook,
    MlflowRunnerTagHook,
    PretrainedModelHook,
    ProjectRootHook,
)
from aerial_inpainting.project_paths import ProjectConfigLoader

# Two warnings every `kedro` command printed about code that is not ours, silenced only where
# they come from (this module is imported before Kedro loads the plugins' commands):
# * OmegaConf 2.4 deprecates register_new_resolver(), which Kedro's OmegaConfigLoader (the
#   globals/runtime_params/oc.env resolvers) and kedro-mlflow (km.random_name) still call;
#   each registration itself happens once a process (they check has_resolver or replace);
# * MLflow asks for type hints on kedro-mlflow's KedroPipelineModel.predict (defined when the
#   plugin is imported). This project's pyfunc model is typed (tests/pipelines/training/
#   test_mlflow_tracking.py), so the warning cannot be about it. MLflow issues it under its
#   own warnings.catch_warnings (simplefilter "once"), which no warnings filter overrides;
#   Kedro's logging captures warnings (logger "py.warnings"), so the record is dropped there:
#   only this message, only from that MLflow module.
warnings.filterwarnings(
    "ignore",
    message=r"register_new_resolver\(\) is deprecated",
    category=UserWarning,
    module=r"(kedro\.config\.omegaconf_config|kedro_mlflow\.)",
)


class _KedroMlflowPredictHintFilter(logging.Filter):
    """Drops MLflow's "Add type hints to the `predict` method" record (kedro-mlflow's model)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not (
            "Add type hints to the `predict` method" in text
            and "mlflow/pyfunc/utils/data_validation.py" in text.replace("\\", "/")
        )


logging.getLogger("py.warnings").addFilter(_KedroMlflowPredictHintFilter())

# kedro-mlflow registers its own hook through its plugin entry point.
HOOKS = (ProjectRootHook(), MlflowRunHook(), MlflowRunnerTagHook(), PretrainedModelHook())

# OmegaConfigLoader, with mlflow.yml's relative sqlite:/// URIs under the project root.
CONFIG_LOADER_CLASS = ProjectConfigLoader
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
