"""Loss families, one module each, and `FAMILIES`: kind -> (params model, adapter).

Add a family: write `pipeline/losses/<name>.py` (math functions + a `<Name>Params(TermParams)` with
`kind: Literal["<name>"]` and `sub_weights(epoch)` + a `<Name>Loss` adapter), add one line
here, add `tests/losses/test_<name>.py` (and one example params entry in tests/losses/conftest.py).
`recipe.py` builds the discriminated union of params from this dict.
"""

from pipeline.losses._contract import Family
from pipeline.losses.attention import AttentionLoss, AttentionParams
from pipeline.losses.ce import CELoss, CEParams
from pipeline.losses.crd import CRDLoss, CRDParams
from pipeline.losses.dkd import DKDLoss, DKDParams
from pipeline.losses.feature import FeatureLoss, FeatureParams
from pipeline.losses.gram import GramLoss, GramParams
from pipeline.losses.hidden import HiddenLoss, HiddenParams
from pipeline.losses.hinton import HintonLoss, HintonParams
from pipeline.losses.mmd import MMDLoss, MMDParams
from pipeline.losses.mutual import MutualLoss, MutualParams
from pipeline.losses.rkd import RKDLoss, RKDParams
from pipeline.losses.self_training import SelfTrainingLoss, SelfTrainingParams
from pipeline.losses.smoothing import SmoothingLoss, SmoothingParams
from pipeline.losses.token_kd import TokenKDLoss, TokenKDParams
from pipeline.losses.vanilla import CombinedParams, VanillaLoss, VanillaParams

FAMILIES: dict[str, Family] = {
    "ce": Family(CEParams, CELoss),
    "hinton": Family(HintonParams, HintonLoss),
    "feature": Family(FeatureParams, FeatureLoss),
    "vanilla": Family(VanillaParams, VanillaLoss),
    "combined": Family(CombinedParams, VanillaLoss),
    "crd": Family(CRDParams, CRDLoss),
    "rkd": Family(RKDParams, RKDLoss),
    "mmd": Family(MMDParams, MMDLoss),
    "hidden": Family(HiddenParams, HiddenLoss),
    "attention": Family(AttentionParams, AttentionLoss),
    "gram": Family(GramParams, GramLoss),
    "smoothing": Family(SmoothingParams, SmoothingLoss),
    "self_training": Family(SelfTrainingParams, SelfTrainingLoss),
    "mutual": Family(MutualParams, MutualLoss),
    "dkd": Family(DKDParams, DKDLoss),
    "token_kd": Family(TokenKDParams, TokenKDLoss),
}
