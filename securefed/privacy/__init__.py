"""securefed.privacy: clipping, DP mechanisms and encoders, accountants, ledger, budgets (protocols/dp.md).

The runtime uses the facade: :class:`DPConfig`, :class:`PrivacySession`, :class:`RoundPrivacy`,
:class:`BudgetExhausted`, :class:`ClipInfo`. Pure math lives in ``rdp``; state in ``accountant``/``ledger``.
"""

from securefed.primitives.quantize import RingSpec
from securefed.privacy.clipping import ClipInfo
from securefed.privacy.config import BudgetExhausted, DPConfig, default_delta
from securefed.privacy.ledger import LedgerError, read_ledger
from securefed.privacy.round import RoundPrivacy
from securefed.privacy.session import PrivacySession

__all__ = [
    "DPConfig",
    "BudgetExhausted",
    "PrivacySession",
    "RoundPrivacy",
    "ClipInfo",
    "RingSpec",
    "LedgerError",
    "read_ledger",
    "default_delta",
]
