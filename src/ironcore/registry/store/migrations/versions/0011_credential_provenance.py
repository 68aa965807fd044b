"""credential provenance: where each device credential came from (registry.provenance)

Provenance is kept in the device body (`credentialProvenance`, by credential fingerprint),
beside the credentials it describes. Existing devices get it from what their rows tell:

- an X.509 credential: certified by the signer its certificate names;
- the new key of the device's last key rotation: rotated in, from the rotation's old key;
- any other plain key of a device that holds a certificate, or was imported with one (the
  manifest import's `certificateSignerKeyId` metadata): origin unknown, and it descends from
  the device's signers. Before this revision a rotation recorded only its last key, so a plain
  key on a certified device may have been rotated in: it is treated as if it had been, and a
  revocation of the device's signer covers it (an operator re-attests a device they trust);
- a plain key of a device imported from a manifest without a certificate: "manifest";
- any other plain key: added by an operator ("admin"), which no signer revocation affects.

Revision ID: 0011
Revises: 0009
"""

import json
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from ironcore.registry import provenance as prov

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BATCH = 500
_devices = sa.table(
    "devices",
    sa.column("num_id", sa.BigInteger),
    sa.column("body", sa.JSON().with_variant(JSONB(), "postgresql")),
)


def upgrade() -> None:
    _rewrite(lambda body: {**body, prov.BODY_KEY: backfill(body)})


def downgrade() -> None:
    _rewrite(lambda body: {k: v for k, v in body.items() if k != prov.BODY_KEY})


def backfill(body: dict[str, Any]) -> dict[str, Any]:
    """The provenance map of a device body written before provenance was recorded."""
    credentials = list(body.get("credentials", []))
    keys = [prov.parsed(c) for c in credentials]
    signers = {
        s.certified_by for s in (prov.derived(k, prov.ADMIN) for k in keys) if s.certified_by
    }
    metadata = body.get("metadata") or {}
    if metadata.get("certificateSignerKeyId"):
        signers.add(str(metadata["certificateSignerKeyId"]))
    rotation = body.get("keyRotation") or {}
    rotated = rotation.get("new_key") if rotation.get("state") in ("key_added", "completed") else ""
    out: dict[str, Any] = {}
    for credential, key in zip(credentials, keys, strict=True):
        name = key.fingerprint if key is not None else prov.fingerprint(credential)
        if key is not None and key.certificate is not None:
            found = prov.derived(key, prov.ADMIN)
        elif name == rotated:
            found = prov.Provenance(
                prov.ROTATION,
                rotated_from=str(rotation.get("old_key", "")),
                signers=tuple(sorted(signers)),
            )
        elif signers:
            found = prov.Provenance(prov.UNKNOWN, signers=tuple(sorted(signers)))
        elif metadata.get("manifestSigner"):
            found = prov.Provenance(prov.MANIFEST)
        else:
            found = prov.Provenance(prov.ADMIN)
        out[name] = found.to_body()
    return out


def _rewrite(change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    connection = op.get_bind()
    after = -(2**63)
    while True:
        rows = connection.execute(
            sa.select(_devices.c.num_id, _devices.c.body)
            .where(_devices.c.num_id > after)
            .order_by(_devices.c.num_id)
            .limit(_BATCH)
        ).all()
        if not rows:
            return
        for num_id, body in rows:
            current = json.loads(body) if isinstance(body, str) else body
            connection.execute(
                sa.update(_devices).where(_devices.c.num_id == num_id).values(body=change(current))
            )
        after = rows[-1][0]
