"""ppo_lab — the tested code behind *ppo-book*.

Every equation the book derives is implemented once here and imported by the chapter that
derives it. The core API (chapters 1–4) is pure tensor math and is re-exported below.
"""

__version__ = "0.1.0"

# --- core API re-exports (chapters 1–4): exactly ppo_lab.core.__all__ ----------------------
from ppo_lab.core import *  # noqa: E402,F403
from ppo_lab.core import __all__  # noqa: E402
