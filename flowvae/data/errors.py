"""The data package's error: a dataset or image that cannot be used as asked (the message says why and the fix)."""
from ..errors import FlowVAEError


class DataError(FlowVAEError, RuntimeError):
    pass
