"""Public data sets by name: a catalog, a resumable checked download, a safe extraction, a local cache.

`get_dataset("pets")` downloads fastai's Oxford-IIIT Pets archive into `$IMGCLF_DATA` (default
`~/.cache/imgclf/datasets`), verifies it against the checksum its publisher gives, extracts it and returns
the folder to train on; `resolve_config(cfg)` turns `imgclf train pets` into that folder plus the entry's
data options (`--label-re` for pets, `--valid test` for CIFAR-10...). A path that exists always wins over a name.

Why each step is the way it is:
- the download goes to `FILE.part` and resumes with an HTTP Range request (a server that ignores Range sends
  the whole file again: we start over and say so); it is complete only when it has Content-Length bytes;
- the checksum (sha256 where published, else md5 from torchvision's or fastai's tables) is checked before
  anything is extracted; a mismatch deletes the download and extracts nothing;
- archives come from the network, so every member is checked before it is written: no absolute path, no
  `..`, no links, no devices, at most `MAX_MEMBERS` members and `MAX_BYTES` bytes in all (zip bombs: a zip
  member is copied with a counter, not trusted for its declared size). Tar members are also written through
  Python's `filter="data"` (3.11.4+ / 3.12; older Pythons have only our checks, which refuse the same things);
- extraction goes into a hidden temporary folder renamed into place at the end, so a killed extraction
  leaves nothing that looks complete (the next `get` removes the leftovers).
`IMGCLF_DATASETS_MIRROR=http://host/path` fetches every file by its name from a mirror instead.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from ..config import RunConfig, cache_home
from ..errors import UserError
from ..progress import Bar
from ..progress import bar as progress_bar

MAX_BYTES = 64 * 2**30  # the largest set here unpacks to ~1.2 GB; a bomb stops at 64 GiB, not at a full disk
MAX_MEMBERS = 1_000_000  # CIFAR-10 has 60,000 files
CHUNK = 2**20


@dataclass(frozen=True)
class Remote:
    """One file to fetch: its URL, `sha256:<hex>` or `md5:<hex>` as published ("" = none published)."""

    url: str
    checksum: str = ""

    @property
    def filename(self) -> str:
        return PurePosixPath(self.url.split("?")[0]).name


@dataclass(frozen=True)
class Dataset:
    """A catalog entry: where it comes from and how `imgclf train NAME` reads it.

    `images`: the image files in `folder` (every one that `imgclf train` finds, as the publisher ships them);
    `folder`: the folder to train on inside the extracted files; `options`: DataConfig fields it needs
    (label_re, valid...); `class_names`: folder renames (Imagenette's WordNet ids to words)."""

    name: str
    title: str
    files: tuple[Remote, ...]
    size: int  # download bytes (for the listing; the checksum is what is verified)
    images: int
    classes: int
    licence: str
    folder: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    class_names: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    note: str = ""

    @property
    def verified(self) -> bool:
        return all(f.checksum for f in self.files)


FAI = "https://s3.amazonaws.com/fast-ai-imageclas/"
FMNIST = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
IMAGENETTE_CLASSES = {
    "n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player", "n03000684": "chain saw",
    "n03028079": "church", "n03394916": "French horn", "n03417042": "garbage truck", "n03425413": "gas pump",
    "n03445777": "golf ball", "n03888605": "parachute",
}
# Checksums: sha256 from PyTorch's tutorials (.jenkins/download_data.py) and TensorFlow Datasets'
# url_checksums/*.txt; md5 from torchvision (Imagenette) and fastai's data/checks.txt (pets, cifar10).
CATALOG: dict[str, Dataset] = {d.name: d for d in [
    Dataset("hymenoptera", "ants vs bees (PyTorch transfer-learning tutorial)", (Remote(
        "https://download.pytorch.org/tutorial/hymenoptera_data.zip",
        "sha256:fbc41b31d544714d18dd1230b1e2b455e1557766e13e67f9f5a7a23af7c02209"),),
        # 398 = 124 + 121 train + 70 + 83 val files; all decode and train, the GIF (train/ants/imageNotFound.gif) too
        47_286_322, 398, 2, "ImageNet terms (research)", folder="hymenoptera_data"),
    Dataset("pets", "Oxford-IIIT Pets, 37 breeds (fastai's archive)", (Remote(
        FAI + "oxford-iiit-pet.tgz", "md5:e4db5c768afd933bb91f5f594d7417a4"),),
        811_706_944, 7_390, 37, "CC BY-SA 4.0", folder="oxford-iiit-pet/images",
        options={"label_re": r"^(.+)_\d+\.jpg$"}, aliases=("oxford-iiit-pet", "oxford-pets")),
    Dataset("imagenette-160", "Imagenette, 10 easy ImageNet classes, 160 px", (Remote(
        FAI + "imagenette2-160.tgz", "md5:e793b78cc4c9e9a4ccc0c1155377a412"),),
        99_003_388, 13_394, 10, "Apache-2.0 (images: ImageNet terms)", folder="imagenette2-160",
        class_names=IMAGENETTE_CLASSES, aliases=("imagenette", "imagenette2-160")),
    Dataset("imagenette-320", "Imagenette, 10 easy ImageNet classes, 320 px", (Remote(
        FAI + "imagenette2-320.tgz", "md5:3df6f0d01a2c9592104656642f5e78a3"),),
        341_663_724, 13_394, 10, "Apache-2.0 (images: ImageNet terms)", folder="imagenette2-320",
        class_names=IMAGENETTE_CLASSES, aliases=("imagenette2-320",)),
    Dataset("food-11", "Food-11 as ML2022 Spring HW3 ships it (training/ validation/ test/)", (Remote(
        "https://www.dropbox.com/s/6l2vcvxl54b0b6w/food11.zip?dl=1"),),
        1_100_000_000, 16_643, 11, "research use (EPFL MMSPG Food-11)", folder="food11",
        options={"label_re": r"^(\d+)_"}, aliases=("food11",),
        note="no published checksum: the course's Dropbox link (also on Kaggle, ml2022spring-hw3b)"),
    Dataset("fashion-mnist", "Fashion-MNIST, 28 px grey clothes (IDX files)", tuple(
        Remote(FMNIST + n, "sha256:" + h) for n, h in [
        ("train-images-idx3-ubyte.gz", "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
        ("train-labels-idx1-ubyte.gz", "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
        ("t10k-images-idx3-ubyte.gz", "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
        ("t10k-labels-idx1-ubyte.gz", "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5")]),
        30_878_645, 70_000, 10, "MIT", aliases=("fashion_mnist", "fmnist")),
    Dataset("cifar10", "CIFAR-10 as PNG folders (fastai's archive)", (Remote(
        "https://s3.amazonaws.com/fast-ai-sample/cifar10.tgz", "md5:a5f8c31371b63a406b23368042812d3c"),),
        168_168_549, 60_000, 10, "none stated (Krizhevsky 2009)", folder="cifar10",
        options={"valid": "test"}, aliases=("cifar-10",)),
    Dataset("flowers", "five flowers (TensorFlow's flower_photos)", (Remote(
        "http://download.tensorflow.org/example_images/flower_photos.tgz",
        "sha256:4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c"),),
        228_813_984, 3_670, 5, "CC BY 2.0", folder="flower_photos", aliases=("flower_photos", "tf_flowers")),
]}


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def find(name: str) -> Dataset | None:
    """The catalog entry called `name` (or one of its aliases; case and -/_ do not matter), else None."""
    k = _key(name)
    return next((d for d in CATALOG.values() if k in {_key(n) for n in (d.name, *d.aliases)}), None)


def lookup(name: str) -> Dataset:
    """Like `find`, but an unknown name is a UserError that lists the known ones."""
    ds = find(name)
    if ds is None:
        raise UserError(f"{name}: not a known data set (known: {', '.join(CATALOG)})")
    return ds


def register_dataset(ds: Dataset, overwrite: bool = False) -> Dataset:
    """Add an entry (a private mirror, a set of your own, or a test's tiny archive) to the catalog."""
    if ds.name in CATALOG and not overwrite:
        raise UserError(f"{ds.name}: already in the catalog (overwrite=True to replace it)")
    CATALOG[ds.name] = ds
    return ds


def data_home() -> Path:
    """Where data sets are cached: `$IMGCLF_DATA`, else `config.cache_home()/datasets` (~/.cache/imgclf/datasets)."""
    return Path(os.environ["IMGCLF_DATA"]).expanduser() if os.environ.get("IMGCLF_DATA") else cache_home() / "datasets"


def local_dir(ds: Dataset | str) -> Path:
    """The folder the entry extracts into (whether or not it is there yet)."""
    return data_home() / (lookup(ds) if isinstance(ds, str) else ds).name


def train_path(ds: Dataset | str) -> Path:
    """The folder `imgclf train NAME` reads: the entry's `folder` inside its local copy."""
    ds = lookup(ds) if isinstance(ds, str) else ds
    return local_dir(ds) / ds.folder if ds.folder else local_dir(ds)


def is_cached(ds: Dataset | str) -> bool:
    return local_dir(ds).is_dir()


def get_dataset(name: str, force: bool = False, verify: bool = True, progress: bool = True) -> Path:
    """Download, verify and extract data set `name` unless it is cached (`force`: again); returns `train_path`.

    `verify=False` accepts a file whose checksum differs from the catalog's (a publisher's re-upload)."""
    ds = lookup(name)
    home, final = data_home(), local_dir(ds)
    if final.is_dir() and not force:
        return train_path(ds)
    home.mkdir(parents=True, exist_ok=True)
    for stale in home.glob(f".{ds.name}.tmp-*"):  # a killed extraction's leftovers: never complete, never used
        shutil.rmtree(stale, ignore_errors=True)
    downloads = home / "downloads"
    downloads.mkdir(exist_ok=True)
    if force:  # again from the publisher, not from a download an earlier run left
        for f in ds.files:
            (downloads / f.filename).unlink(missing_ok=True)
    files = [download(f, downloads / f.filename, progress) for f in ds.files]
    for f, path in zip(ds.files, files, strict=True):
        check_file(f, path, name=ds.name, verify=verify)
    tmp = Path(tempfile.mkdtemp(prefix=f".{ds.name}.tmp-", dir=home))
    try:
        for path in files:
            if _archive_kind(path):
                print(f"extracting {path.name} ...")
                extract(path, tmp, progress=progress)
            else:  # a plain file (Fashion-MNIST's IDX .gz files are read as they are)
                shutil.move(path, tmp / path.name)
        _rename_classes(tmp / ds.folder, ds.class_names)
        if not (tmp / ds.folder).is_dir():
            raise UserError(f"{ds.name}: the archive has no {ds.folder}/ folder; the catalog entry is out of date")
        if final.exists():  # --force: the old copy goes only once the new one is complete
            old = Path(tempfile.mkdtemp(prefix=f".{ds.name}.tmp-old-", dir=home))
            os.replace(final, old / "x")
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, final)
    except OSError as e:  # a full disk, a name this file system refuses...
        raise UserError(f"{ds.name}: extraction failed ({e}); nothing was kept") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for path in files:
        path.unlink(missing_ok=True)  # the extracted copy is what is used; the archive would double the disk
    return train_path(ds)


def mirror_url(url: str) -> str:
    """`url`, or the same file name under `$IMGCLF_DATASETS_MIRROR` when that is set."""
    base = os.environ.get("IMGCLF_DATASETS_MIRROR")
    return f"{base.rstrip('/')}/{Remote(url).filename}" if base else url


def download(remote: Remote, dest: Path, progress: bool = True) -> Path:
    """Fetch `remote` to `dest` through `dest.part`, resuming a partial file; returns `dest` when complete.

    A connection that drops keeps the `.part` and raises a UserError saying that running again resumes."""
    if dest.exists():
        return dest
    url, part = mirror_url(remote.url), dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "imgclf"} | ({"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the part may be whole; the checksum will tell
            os.replace(part, dest)
            return dest
        raise UserError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise UserError(f"{url}: cannot download ({getattr(e, 'reason', e)})") from None
    with resp:
        if have and resp.status == 206:
            if not (resp.headers.get("Content-Range") or f"bytes {have}-").startswith(f"bytes {have}-"):
                part.unlink()  # the server sent another range than the one asked for: the part cannot be trusted
                raise UserError(f"{url}: the server answered the resume with another byte range; the partial file "
                                "is deleted: run the same command again to download from the start")
            print(f"resuming {dest.name} at {have / 2**20:.1f} MiB")
        elif have:
            print(f"{url}: the server ignores Range requests: downloading {dest.name} again from the start")
            have = 0
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        bar = progress_bar(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                           enabled=progress, leave=True)
        got = have
        try:
            with open(part, "ab" if have else "wb") as out, bar:
                while chunk := resp.read(CHUNK):
                    out.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as e:
            raise UserError(f"{url}: download interrupted at {got:,} of {total or '?'} bytes ({e}); the partial "
                            f"file {part} is kept: run the same command again to resume") from None
    if total is not None and got < total:
        raise UserError(f"{url}: download stopped at {got:,} of {total:,} bytes; the partial file {part} is kept: "
                        "run the same command again to resume")
    os.replace(part, dest)
    return dest


def file_digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def check_file(remote: Remote, path: Path, name: str, verify: bool = True) -> None:
    """Compare `path` with the published checksum; a mismatch deletes it (nothing is extracted) and says why."""
    if not remote.checksum:
        warnings.warn(f"{name}: {path.name} has no published checksum, so it is not verified "
                      f"(its sha256 is {file_digest(path, 'sha256')})", stacklevel=2)
        return
    algo, want = remote.checksum.split(":", 1)
    got = file_digest(path, algo)
    if got == want.lower():
        return
    if not verify:
        warnings.warn(f"{name}: {path.name}'s {algo} is {got}, not the catalog's {want}; used anyway (--no-verify)",
                      stacklevel=2)
        return
    path.unlink()
    raise UserError(f"{name}: {path.name} failed its checksum ({algo} {got}, expected {want}); the download is "
                    "deleted and nothing was extracted. Run the command again; if it fails the same way the "
                    "publisher changed the file: check it and pass --no-verify")


def _archive_kind(path: Path) -> str | None:
    if zipfile.is_zipfile(path):
        return "zip"
    return "tar" if tarfile.is_tarfile(path) else None


def _check_name(archive: Path, name: str) -> PurePosixPath:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        raise UserError(f"{archive.name}: member {name!r} would be written outside the target folder "
                        "(absolute path or '..'): refused, nothing extracted")
    return p


def _check_count_size(archive: Path, n: int, total: int, max_members: int, max_bytes: int) -> None:
    if n > max_members:
        raise UserError(f"{archive.name}: more than {max_members:,} members: refused as a possible archive bomb")
    if total > max_bytes:
        raise UserError(f"{archive.name}: unpacks to more than {max_bytes:,} bytes: refused as a possible "
                        "archive bomb, nothing kept")


def extract(archive: Path, target: Path, max_bytes: int = MAX_BYTES, max_members: int = MAX_MEMBERS,
            progress: bool = False) -> None:
    """Unpack a zip or tar(.gz/.bz2/.xz) into `target`, member by member, refusing anything unsafe.

    Raises UserError on the first bad member; what was written so far is the caller's to delete (`get`
    extracts into a temporary folder for that reason)."""
    kind = _archive_kind(archive)
    if kind is None:
        raise UserError(f"{archive}: neither a zip nor a tar archive")
    with progress_bar(desc=archive.name, unit="files", enabled=progress, leave=True) as bar:
        (_extract_zip if kind == "zip" else _extract_tar)(archive, target, max_bytes, max_members, bar)


def _extract_tar(archive: Path, target: Path, max_bytes: int, max_members: int, bar: Bar) -> None:
    data_filter = getattr(tarfile, "data_filter", None)  # Python 3.11.4+ / 3.12
    total = 0
    try:
        with tarfile.open(archive) as tf:
            for n, m in enumerate(tf, 1):
                _check_name(archive, m.name)
                if m.issym() or m.islnk():
                    raise UserError(f"{archive.name}: member {m.name!r} is a link (to {m.linkname!r}): links are "
                                    "refused in data set archives, nothing extracted")
                if not (m.isfile() or m.isdir()):
                    raise UserError(f"{archive.name}: member {m.name!r} is a device or pipe: refused")
                total += m.size
                _check_count_size(archive, n, total, max_members, max_bytes)
                if data_filter is not None:
                    tf.extract(m, target, filter=data_filter)
                else:
                    tf.extract(m, target, set_attrs=False)
                bar.update()
    except tarfile.TarError as e:
        raise UserError(f"{archive.name}: bad tar archive ({e}), nothing kept") from None
    except EOFError:
        raise UserError(f"{archive.name}: truncated tar archive, nothing kept") from None


def _extract_zip(archive: Path, target: Path, max_bytes: int, max_members: int, bar: Bar) -> None:
    total = 0
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            _check_count_size(archive, len(infos), 0, max_members, max_bytes)
            bar.total = len(infos)
            for info in infos:
                rel = _check_name(archive, info.filename)
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise UserError(f"{archive.name}: member {info.filename!r} is a symbolic link: links are "
                                    "refused in data set archives, nothing extracted")
                dest = target.joinpath(*rel.parts)
                if info.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(dest, "wb") as out:
                    while chunk := src.read(CHUNK):  # counted as written: a member's declared size can lie
                        total += len(chunk)
                        _check_count_size(archive, 0, total, max_members, max_bytes)
                        out.write(chunk)
                bar.update()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError) as e:
        raise UserError(f"{archive.name}: bad zip archive ({e}), nothing kept") from None


def _rename_classes(root: Path, names: dict[str, str]) -> None:
    """Rename class folders (at the top of `root` or one split folder down) by `names`."""
    if not names:
        return
    for d in [root, *(p for p in root.iterdir() if p.is_dir())]:
        for c in [p for p in d.iterdir() if p.is_dir() and p.name in names]:
            c.rename(c.with_name(names[c.name]))


def resolve_config(cfg: RunConfig, progress: bool = True) -> RunConfig:
    """`cfg` with a data set name in `data.path` turned into its local folder (downloaded first if needed), the
    entry's data options filled in where the user left them unset, and `out` defaulting to runs/NAME.

    A path that exists wins over a name; anything else is returned unchanged."""
    path = cfg.data.path
    ds = find(path) if path and not Path(path).exists() and not cfg.data.csv else None
    if ds is None:
        return cfg
    if is_cached(ds):
        print(f"data set {ds.name}: {train_path(ds)}")
    else:
        print(f"data set {ds.name}: not in {data_home()} yet, downloading it ({ds.size / 2**20:,.0f} MiB)")
        get_dataset(ds.name, progress=progress)
    unset = {k: v for k, v in ds.options.items() if getattr(cfg.data, k) is None}
    data = replace(cfg.data, path=str(train_path(ds)), **unset)
    return replace(cfg, data=data, out=cfg.out or str(Path("runs") / ds.name))
