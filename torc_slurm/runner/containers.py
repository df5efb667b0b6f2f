"""Running a job inside a container image (pure: builds the command text, runs nothing).

A job with ``image`` runs natively unless the site config names a container runtime (apptainer or
singularity) that is installed; then the runner starts ``container_command(runtime, image,
command)`` with ``bash -c`` instead of the job's own command. The job's command is passed to
``bash -c`` inside the container as one argument, so it runs there exactly as it would natively,
and the environment (``TORC_*`` included) is the runtime's: Apptainer passes the host's
environment through by default.

An image written as a registry reference (``ubuntu:24.04``, ``nvcr.io/org/img:tag``) gets the
``docker://`` prefix Apptainer needs; an image with a URI scheme (``docker://``, ``oras://``,
``library://``…), a path (``/``, ``./``, ``../``, ``~``) or a ``.sif``/``.img`` file name is used as
written.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence

__all__ = ["container_command", "image_reference"]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_IMAGE_FILE = (".sif", ".img", ".simg")


def image_reference(image: str) -> str:
    """``image`` as the runtime should see it (``docker://`` added to a bare registry reference)."""
    if not isinstance(image, str) or not image.strip() or any(ord(c) < 32 or ord(c) == 127 for c in image):
        raise ValueError(f"not a container image: {image!r}")
    if image.startswith(("/", "./", "../", "~")) or image.endswith(_IMAGE_FILE):
        return image  # an image file (its path may hold spaces)
    if any(c.isspace() for c in image):
        raise ValueError(f"not a container image: {image!r}")
    return image if _SCHEME.match(image) else f"docker://{image}"


def container_command(runtime: str, image: str, command: str, *, binds: Sequence[str] = (),
                      gpus: bool = False) -> str:
    """The shell text that runs ``command`` (a ``bash -c`` script) inside ``image`` with ``runtime``
    (``apptainer``, ``singularity``, or a path to one): ``<runtime> exec [--nv] [--bind B]…
    <image> bash -c <command>``, every word quoted. ``binds``: host folders to mount at the same
    path (the workflow's output folder when it is not under the home folder); ``gpus``: pass the
    node's NVIDIA GPUs in (``--nv``)."""
    if not isinstance(runtime, str) or not runtime.strip() or "\x00" in runtime:
        raise ValueError(f"not a container runtime: {runtime!r}")
    if not isinstance(command, str) or "\x00" in command:
        raise ValueError("the command must be text without NUL characters")
    words = [runtime, "exec"]
    if gpus:
        words.append("--nv")
    for bind in binds:
        if not bind or "\x00" in bind or "," in bind:
            raise ValueError(f"not a folder to bind: {bind!r}")
        words += ["--bind", bind]
    words += [image_reference(image), "bash", "-c", command]
    return shlex.join(words)
