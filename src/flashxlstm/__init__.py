"""flashxlstm: xLSTM end to end (sLSTM and mLSTM cells, NeurIPS and 7B model families)."""
from . import ops
from .models.auto import from_pretrained
from .models.official import from_official, to_official
from .models.xlstm_large import xLSTMLarge, xLSTMLargeConfig
from .models.xlstm_lm import xLSTMLM, xLSTMLMConfig
from . import hf as _hf

_hf.install()  # transformers' AutoConfig / AutoModelForCausalLM learn our model types (see flashxlstm.hf)

__version__ = "0.1.0"
__all__ = ["ops", "from_official", "to_official", "xLSTMLM", "xLSTMLMConfig",
           "from_pretrained", "xLSTMLarge", "xLSTMLargeConfig"]
