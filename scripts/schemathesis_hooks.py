"""schemathesis hooks for scripts/check-api.

The exports answer NDJSON (one JSON value per line), which schemathesis cannot
read by itself. The documents describe an export's body as the array of its lines,
so this deserializer hands schemathesis that array and every line is validated.
"""

import json

import schemathesis


@schemathesis.deserializer("application/x-ndjson")
def ndjson(ctx, response):
    text = response.content.decode("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]
