"""What a plugin archive may hold (host.archive's limits), apart from the readers that enforce them
(host.archive_formats, with tarfile, zipfile and gzip), which only an install from an archive imports: the
supervisor sweeps archive scratch directories at start without them (issue 12: idle memory).
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What an archive may hold. The defaults match what `host install DIR` copies (host.bundle)."""

    max_members: int = 20000
    max_member_bytes: int = 100 * MiB
    max_total_bytes: int = 200 * MiB
    max_archive_bytes: int = 200 * MiB  # the archive file itself
    max_depth: int = 32  # path components
    max_path_bytes: int = 1024
    max_name_bytes: int = 255  # one component (NAME_MAX)

    @property
    def max_stream_bytes(self) -> int:
        """A tar's decompressed stream: the data plus headers and padding (2 blocks a member, + slack)."""
        return self.max_total_bytes + self.max_members * 1024 + 16 * MiB


LIMITS = Limits()


def mib(n: int) -> str:
    return f"{n / MiB:g} MiB"
