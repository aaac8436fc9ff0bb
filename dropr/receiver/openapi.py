"""GET /v1/openapi.json: the OpenAPI 3 document of the receiver's HTTP API.

The document is ``openapi.json`` beside this module, kept in the repository
and written by hand; a test checks it against the app's routes and answers.
"""

import importlib.resources
import json

DOCUMENT = "openapi.json"


def load_document():
    """The document's bytes, checked to be JSON (a broken file fails the boot,
    not a client's request)."""
    data = importlib.resources.files(__package__).joinpath(DOCUMENT).read_bytes()
    json.loads(data)
    return data


class OpenAPIResource:
    """Serves the OpenAPI document as it is in the package. Runs in receiver
    worker processes."""

    def __init__(self):
        self.document = load_document()

    def on_get(self, req, resp):
        resp.data = self.document
        resp.content_type = "application/json"
