"""Time-series forecasting: a TiRex-style sLSTM forecaster over patches with a quantile head (model.py),
its configuration (config.py) and the context forms it reads (inputs.py)."""
from .config import DEFAULT_QUANTILES, ForecastConfig
from .inputs import ContextBatch, instance_scale, to_context_batch
from .model import ForecastOutput, ForecastStream, xLSTMForecaster

__all__ = ["DEFAULT_QUANTILES", "ContextBatch", "ForecastConfig", "ForecastOutput", "ForecastStream",
           "instance_scale", "to_context_batch", "xLSTMForecaster"]
