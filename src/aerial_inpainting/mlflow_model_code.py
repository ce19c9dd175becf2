"""The code file MLflow logs as the pyfunc model (MLflow 3's "models from code").

:func:`aerial_inpainting.mlflow_model.log_pyfunc_model` logs this file's path as
``python_model``; ``mlflow.pyfunc.load_model`` runs it, takes the object given to
``set_model`` and calls its ``load_context`` (the weights artifact and the device from the
logged ``model_config``). No Python object is pickled.
"""

from mlflow.models import set_model

from aerial_inpainting.mlflow_model import PConvInpaintingModel

set_model(PConvInpaintingModel())
