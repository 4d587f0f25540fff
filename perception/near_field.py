"""How a model's class map is post-processed near the car, as one value: the near-field bias
(postprocess.class_map's free confidence), the near-field memory (perception.temporal) and the echo floor
(postprocess.apply_echo_floor). A registered operating point is one of these (deploy.zoo), and run, view and eval
take one. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass

from perception.postprocess import check_free_confidence
from perception.temporal import check_decay
from sensors.errors import ConfigError


@dataclass(frozen=True)
class NearFieldSettings:
    """free_confidence: within 1 m of the body a cell is free only where the network gives FREE at least this (None:
    the argmax); memory_decay: the near-field memory's decay per frame (None: no memory); echo_floor: a direct echo
    at the bumper is an obstacle whatever the network says. The defaults are the plain argmax, frame by frame."""

    free_confidence: float | None = None
    memory_decay: float | None = None
    echo_floor: bool = False

    def __post_init__(self):
        if self.free_confidence is not None:
            check_free_confidence(self.free_confidence)
        if self.memory_decay is not None:
            check_decay(self.memory_decay)
        if not isinstance(self.echo_floor, bool):
            raise ConfigError(f"echo_floor must be true or false, got {self.echo_floor!r}")

    @property
    def plain(self) -> bool:
        """The argmax frame by frame: nothing added."""
        return self == NearFieldSettings()


__all__ = ["NearFieldSettings"]
