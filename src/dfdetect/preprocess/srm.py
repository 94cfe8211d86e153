"""SRM high-pass residuals: the kernels, the filtered copy of the crops, and the in-model layer.

The three classic 5x5 kernels (KB/4, KV/12, H2/2; see ../shared/REFERENCE.md) suppress image content
and keep the noise residual, where blending and resampling traces of a face swap live.

Two ways to use them:

- **A filtered copy of the dataset** (the seed's approach), :func:`make_srm_copy` /
  :func:`srm_filter_image`, saved as 8-bit PNG. Residuals are computed in float32 on pixel values
  0..255, clipped to ``[-clip, clip]`` (default 3, the truncation classic SRM features use) and
  mapped linearly to 0..255 (see :func:`srm_filter_image`).
- **A fixed layer in the model** (NA-VGG style), :class:`SRMConv2d`, on the normalized float tensor
  the backbone gets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import cv2
import numpy as np

from dfdetect._io import is_valid_image, load_image, media_limits, output_stems, write_image
from dfdetect.config import MediaLimits, SRMConfig
from dfdetect.errors import BadInputError, failure_line
from dfdetect.parallel import Engine, ProgressCallback
from dfdetect.preprocess.faces import images_in
from dfdetect.preprocess.manifest import MANIFEST_NAME, read_manifest, write_manifest
from dfdetect.preprocess.stage import JobResult, Stage, StageReport, run_stage

__all__ = ["SRM_KERNELS", "SRM_KERNEL_NAMES", "SRMConv2d", "make_srm_copy", "srm_filter_image"]

SRM_KERNEL_NAMES = ("KB", "KV", "H2")
#: shape (3, 5, 5), float32, in the order KB/4, KV/12, H2/2 (../shared/REFERENCE.md).
SRM_KERNELS = np.stack([
    np.array([[0, 0, 0, 0, 0], [0, -1, 2, -1, 0], [0, 2, -4, 2, 0], [0, -1, 2, -1, 0], [0, 0, 0, 0, 0]]) / 4,
    np.array([[-1, 2, -2, 2, -1], [2, -6, 8, -6, 2], [-2, 8, -12, 8, -2], [2, -6, 8, -6, 2],
              [-1, 2, -2, 2, -1]]) / 12,
    np.array([[0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 1, -2, 1, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]) / 2,
]).astype(np.float32)
SRM_KERNELS.setflags(write=False)

#: ``srm`` always writes PNG: a lossy codec would blur exactly the residual it is meant to keep.
OUTPUT_EXT = "png"


def _to_uint8(residual: np.ndarray, clip: float) -> np.ndarray:
    scaled = (np.clip(residual, -clip, clip) + clip) * (255.0 / (2 * clip))
    return np.rint(scaled).astype(np.uint8)


def srm_filter_image(bgr: np.ndarray, cfg: SRMConfig | None = None) -> np.ndarray:
    """SRM residual of a BGR uint8 image, as a 3-channel uint8 image of the same size.

    - ``mode="classic3"``: output channel ``i`` is kernel ``SRM_KERNELS[i]`` (KB, KV, H2) applied to B, G
      and R and summed, so in cv2's BGR order B = KB, G = KV, R = H2.
    - ``mode="seed"``: the seed's variant, the single kernel ``cfg.seed_kernel`` applied with
      ``cv2.filter2D`` to each channel separately (channel i of the output comes from channel i).

    Both are computed in float32 (``cv2.filter2D`` with ``ddepth=cv2.CV_32F``; on uint8 the negative
    half of the residual would be lost) on pixel values 0..255, with cv2's default reflected border.

    **Scaling to 8 bits:** ``out = round((clip(r, -c, c) + c) * 255 / (2c))`` with ``c = cfg.clip``, so a
    residual of -c maps to 0, 0 to 128 and +c to 255, linearly; larger residuals saturate.
    """
    cfg = SRMConfig() if cfg is None else cfg
    if bgr.ndim == 2:
        bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
    img = bgr.astype(np.float32)
    if cfg.mode == "classic3":
        res = np.stack([cv2.filter2D(img, cv2.CV_32F, k).sum(axis=2) for k in SRM_KERNELS], axis=2)
    else:
        k = SRM_KERNELS[SRM_KERNEL_NAMES.index(cfg.seed_kernel)]
        res = cv2.filter2D(img, cv2.CV_32F, k)
    return _to_uint8(res, cfg.clip)


def _define_srm_conv2d() -> type:
    # torch is imported here, not at module import: the srm *stage* runs in pool / Ray workers that never
    # need torch, and importing it would cost each worker ~2 s and ~200 MB. ``SRMConv2d`` is built on first
    # access (PEP 562 module ``__getattr__``) and then cached as an ordinary module attribute.
    import torch
    from torch import nn

    class SRMConv2d(nn.Module):
        """Fixed (non-trainable) SRM convolution in front of a backbone, NA-VGG style: 3 in -> 3 out.

        Output channel ``i`` is ``SRM_KERNELS[i]`` (KB, KV, H2) summed over the 3 input channels, with
        zero padding 2 (same size out), then ``Hardtanh(-clip, clip)``.

        Note the units: in the model this layer sees the *normalized* float input the backbone expects
        (e.g. ImageNet mean/std, about -2..2.6), not pixels 0..255, so ``clip=3`` here is ~3 normalized
        units (hundreds of grey levels; almost nothing saturates), whereas :func:`srm_filter_image` clips
        at 3 grey levels. The kernels are a buffer, not a parameter: the optimizer never sees them, and
        they are saved with the state dict.
        """

        in_channels = 3
        out_channels = 3

        def __init__(self, clip: float = 3.0):
            super().__init__()
            weight = torch.from_numpy(np.array(SRM_KERNELS))[:, None].repeat(1, self.in_channels, 1, 1)
            self.register_buffer("weight", weight.contiguous())  # (3 out, 3 in, 5, 5)
            self.clip = clip
            self.act = nn.Hardtanh(-clip, clip)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(nn.functional.conv2d(x, self.weight.to(x.dtype), padding=2))

        def extra_repr(self) -> str:
            return f"in_channels=3, out_channels=3, kernels={SRM_KERNEL_NAMES}, clip={self.clip}"

    SRMConv2d.__module__, SRMConv2d.__qualname__ = __name__, "SRMConv2d"
    return SRMConv2d


def __getattr__(name: str):
    if name == "SRMConv2d":
        cls = globals()["SRMConv2d"] = _define_srm_conv2d()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:  # for type checkers and IDEs, which cannot follow __getattr__
    from torch import nn

    class SRMConv2d(nn.Module):
        in_channels: int
        out_channels: int

        def __init__(self, clip: float = 3.0) -> None: ...


# --------------------------------------------------------------------------- the stage


def srm_names(rels: list[str]) -> dict[str, str]:
    """Output path (relative, ``.png``) per input crop: ``face.jpg`` and ``face.png`` would both become
    ``face.png``; the twin that is not PNG gets ``face_jpg.png`` (see :func:`dfdetect._io.output_stems`)."""
    return {rel: f"{stem}.{OUTPUT_EXT}" for rel, stem in output_stems(rels, OUTPUT_EXT).items()}


@dataclass(frozen=True)
class SrmJob:
    """Up to 256 crops of one folder, with the output name of each."""

    group: str
    names: dict[str, str]  #: input crop (relative) -> output file (relative, .png)


@dataclass
class SrmStage(Stage[SrmJob]):
    """The SRM-filtered copy of every crop under ``faces_dir`` (same structure, PNG), manifest copied along."""

    name: ClassVar[str] = "srm"
    faces_dir: Path
    out_dir: Path
    cfg: SRMConfig
    limits: MediaLimits

    def inputs(self) -> list[Path]:
        return [self.faces_dir]

    def plan(self) -> list[SrmJob]:
        files = images_in(self.faces_dir, "faces")
        groups: dict[str, list[str]] = {}
        for f in files:
            rel = f.relative_to(self.faces_dir)
            groups.setdefault(rel.parent.as_posix(), []).append(rel.as_posix())
        jobs = []
        for group, rels in groups.items():
            names = srm_names(rels)
            jobs += [SrmJob(group, {r: names[r] for r in rels[i:i + 256]}) for i in range(0, len(rels), 256)]
        return jobs

    def source(self, job: SrmJob) -> Path:
        return self.faces_dir / job.group

    def weight(self, job: SrmJob) -> int:
        return len(job.names)

    def run_job(self, job: SrmJob) -> JobResult:
        result = JobResult()
        for rel, name in job.names.items():
            src, dest = self.faces_dir / rel, self.out_dir / name
            try:
                if is_valid_image(dest):
                    result.reused += 1
                    continue
                write_image(dest, srm_filter_image(load_image(src, self.limits), self.cfg))
                result.written += 1
            except BadInputError as exc:
                result.failed.append(str(exc))
            except OSError as exc:  # the output disk refuses: name the file, go on
                result.failed.append(f"{dest}: cannot write ({exc.strerror or exc})")
            except Exception as exc:  # noqa: BLE001 - one crop's failure, whatever it is, is one line
                result.failed.append(failure_line(src, exc))
        return result

    def finish(self, report: StageReport, jobs: list[SrmJob], results: list[JobResult]) -> None:
        """Copy the faces manifest, its ``path`` column pointing at the SRM files."""
        manifest = self.faces_dir / MANIFEST_NAME
        if not manifest.is_file():
            return
        names = {rel: name for job in jobs for rel, name in job.names.items()}
        rows = read_manifest(manifest)
        for row in rows:
            if row.get("status") == "ok" and row.get("path"):
                row["path"] = names.get(row["path"], Path(row["path"]).with_suffix(f".{OUTPUT_EXT}").as_posix())
        write_manifest(self.out_dir / MANIFEST_NAME, rows)


def make_srm_copy(
    faces_dir: str | Path,
    out_dir: str | Path,
    cfg: SRMConfig,
    *,
    workers: int = 0,
    engine: Engine = "process",
    ray_address: str | None = None,
    progress: ProgressCallback | None = None,
    limits: MediaLimits | None = None,
) -> StageReport:
    """Write the SRM-filtered copy of every crop under ``faces_dir`` to ``out_dir`` (same structure, PNG).

    Resumable (valid outputs are kept). The faces manifest is copied along, its ``path`` column pointing
    at the SRM files, so labels and crop tables work on the copy unchanged. ``progress(n)`` counts images.
    """
    stage = SrmStage(Path(faces_dir), Path(out_dir), cfg, media_limits(limits))
    return run_stage(stage, workers=workers, engine=engine, ray_address=ray_address, progress=progress)
