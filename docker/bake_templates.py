"""Put the templates the image may need into ``TEMPLATEFLOW_HOME``, through templateflow, at build time.

Usage: ``python bake_templates.py SEED_DIR TEMPLATEFLOW_HOME --required 0|1``

The app reads no template at run time; the demo generator ``tmstarget-synth`` reads TemplateFlow's
MNI152NLin2009cAsym res-02 head and tissue maps (``tmstarget.synthetic``). A ``tpl-*`` folder in
SEED_DIR (for example the seeded home ``../shared/data/templateflow`` copied there by
``scripts/test_container.sh``) is copied into the home first, so that templateflow answers from
disk and the build needs no network; otherwise templateflow downloads the files. With
``--required 0`` a failed download leaves the image without templates (the demo generator then
builds its own head) and says so; with ``--required 1`` it fails the build.
"""

import argparse
import os
import shutil
import stat
import sys
from pathlib import Path

TEMPLATE = "MNI152NLin2009cAsym"
# The files tmstarget.synthetic reads (tmstarget.synthetic.sources._find_template_dir); as
# templateflow.api.get queries.
QUERIES = (
    dict(suffix="T1w", desc=None),
    dict(suffix="mask", desc="brain"),
    dict(suffix="probseg", label="GM"),
    dict(suffix="probseg", label="WM"),
    dict(suffix="probseg", label="CSF"),
)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seed_dir", type=Path)
    parser.add_argument("home", type=Path)
    parser.add_argument("--required", type=int, choices=(0, 1), default=0)
    args = parser.parse_args(argv)

    args.home.mkdir(parents=True, exist_ok=True)
    for folder in sorted(args.seed_dir.glob("tpl-*")):
        # Only the res-02 files: the seeded home also holds a 14 MB 1 mm head no one here reads.
        shutil.copytree(folder, args.home / folder.name, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*_res-01_*"))
        print(f"seeded {args.home / folder.name} from {folder}")
    os.environ["TEMPLATEFLOW_HOME"] = str(args.home)

    try:
        from templateflow import api

        files = [Path(api.get(TEMPLATE, resolution=2, extension=".nii.gz", **query)) for query in QUERIES]
        missing = [str(f) for f in files if not f.is_file() or f.stat().st_size == 0]
        if missing:
            raise OSError(f"not downloaded: {', '.join(missing)}")
    except Exception as err:  # templateflow raises several kinds when offline
        message = f"TemplateFlow {TEMPLATE} could not be fetched ({err})"
        # templateflow leaves empty placeholder files, which tmstarget-synth would take for templates.
        shutil.rmtree(args.home, ignore_errors=True)
        args.home.mkdir(parents=True)
        if args.required:
            sys.exit(f"error: {message}; build with network access or put tpl-{TEMPLATE} in {args.seed_dir}")
        print(f"warning: {message}; the image has no template and tmstarget-synth uses its own head")
        return 0

    # Readable by any user id (Apptainer runs as the calling user).
    for path in [args.home, *args.home.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
                   | (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH if path.is_dir() else 0))
    size = sum(f.stat().st_size for f in files)
    print(f"baked {len(files)} {TEMPLATE} files ({size / 1e6:.1f} MB) into {args.home}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
