"""Drives the service through a client generated from its own OpenAPI
document by openapi-python-client: create, list, get, delete a webhook.

usage: client_roundtrip.py <dir holding the generated smartdrop_client> <base url> <key>
"""
import sys

sys.path.insert(0, sys.argv[1])

from smartdrop_client import AuthenticatedClient  # noqa: E402
from smartdrop_client.api.webhooks import (  # noqa: E402
    create_webhook,
    delete_webhook,
    get_webhook,
    list_webhooks,
)
from smartdrop_client.models import CreateWebhook  # noqa: E402

client = AuthenticatedClient(base_url=sys.argv[2], token=sys.argv[3], raise_on_unexpected_status=True)

created = create_webhook.sync(
    client=client, body=CreateWebhook(url="https://example.com/hook", events=["*"], description="generated")
)
assert created.id.startswith("wh_"), created
assert created.secret.startswith("whsec_"), created
listed = list_webhooks.sync(client=client)
assert [w.id for w in listed.data] == [created.id], listed
got = get_webhook.sync(client=client, id=created.id)
assert (got.url, got.description, got.circuit.state.value) == ("https://example.com/hook", "generated", "closed"), got
deleted = delete_webhook.sync_detailed(client=client, id=created.id)
assert deleted.status_code == 204, deleted
gone = get_webhook.sync_detailed(client=client, id=created.id)
assert gone.status_code == 404, gone
print("round trip ok")
