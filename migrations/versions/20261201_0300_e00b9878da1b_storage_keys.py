"""storage keys: absolute paths under data_dir become relative, content-addressed keys

images.path              <data_dir>/images/ab/cd/<sha256>.<ext>    -> images/ab/cd/<sha256>.<ext>
models.weights_path      <data_dir>/models/<sha256>.pt             -> models/<sha256>.pt
models.spec["weights"]   (the same path)                           -> (the same key)
calibrations.reference_path <data_dir>/calibrations/<id>/...       -> calibrations/<id>/...

The keys are derived from each row's own digest and format (images, weights) or calibration id,
and a row is converted only when its path ends with exactly that key, so it works whatever
data_dir was (a moved volume too) and leaves anything unexpected alone. The files stay where
they are: the local backend reads `data_dir/<key>`, the same file. For the S3 backend, copy
data_dir's images/, models/ and calibrations/ folders into the bucket (docs/deploy.md).

Downgrade prefixes keys with the data_dir of the settings the migration runs with.

Revision ID: e00b9878da1b
Revises: 5e7a1c2b9d30
Create Date: 2026-12-01 03:00:00
"""

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import context, op

revision: str = "e00b9878da1b"
down_revision: str | Sequence[str] | None = "5e7a1c2b9d30"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_IMAGE_KEY = (
    "'images/' || substr(sha256, 1, 2) || '/' || substr(sha256, 3, 2) || '/' || sha256 || '.' || "
    "CASE format WHEN 'JPEG' THEN 'jpg' WHEN 'PNG' THEN 'png' WHEN 'WEBP' THEN 'webp' END"
)
_WEIGHTS_KEY = "'models/' || weights_sha256 || '.pt'"

models = sa.table(
    "models",
    sa.column("id", sa.Uuid),
    sa.column("spec", sa.JSON),
    sa.column("weights_path", sa.String),
    sa.column("weights_sha256", sa.String),
)
calibrations = sa.table(
    "calibrations", sa.column("id", sa.Uuid), sa.column("reference_path", sa.String)
)


def _data_dir() -> str:
    from flipwatch.service.core.settings import Settings

    settings = context.config.attributes.get("settings") or Settings()
    return str(Path(settings.data_dir).resolve())


def upgrade() -> None:
    bind = op.get_bind()
    op.execute(
        f"UPDATE images SET path = {_IMAGE_KEY} "
        f"WHERE path LIKE '/%' AND path LIKE '%/' || {_IMAGE_KEY}"
    )
    for row in bind.execute(sa.select(models)).all():
        key = f"models/{row.weights_sha256}.pt"
        old = row.weights_path
        if not (old.startswith("/") and old.endswith("/" + key)):
            continue
        spec = dict(row.spec)
        if spec.get("weights") == old:
            spec["weights"] = key
        bind.execute(
            sa.update(models).where(models.c.id == row.id).values(weights_path=key, spec=spec)
        )
    for row in bind.execute(sa.select(calibrations)).all():
        old = row.reference_path
        marker = f"/calibrations/{row.id}"
        at = old.find(marker + "/") if not old.endswith(marker) else len(old) - len(marker)
        if not old.startswith("/") or at < 0:
            continue
        bind.execute(
            sa.update(calibrations)
            .where(calibrations.c.id == row.id)
            .values(reference_path=old[at + 1 :])
        )


def downgrade() -> None:
    bind = op.get_bind()
    root = _data_dir().rstrip("/") + "/"
    bind.execute(
        sa.text("UPDATE images SET path = :root || path WHERE path NOT LIKE '/%'"), {"root": root}
    )
    for row in bind.execute(sa.select(models)).all():
        if row.weights_path.startswith("/"):
            continue
        path = root + row.weights_path
        spec = dict(row.spec)
        if spec.get("weights") == row.weights_path:
            spec["weights"] = path
        bind.execute(
            sa.update(models).where(models.c.id == row.id).values(weights_path=path, spec=spec)
        )
    bind.execute(
        sa.text(
            "UPDATE calibrations SET reference_path = :root || reference_path "
            "WHERE reference_path NOT LIKE '/%'"
        ),
        {"root": root},
    )
