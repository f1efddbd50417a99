"""SAM 2.1: the Hiera image encoder, SAM 2's prompt heads, and the memory that carries objects
from plane to plane (our own implementation; parity with Meta's ``sam2`` is tested)."""
