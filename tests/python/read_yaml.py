"""Prints the YAML documents of the given files as one JSON list (for the deployment tests)."""
import json
import sys

import yaml

docs = []
for path in sys.argv[1:]:
    with open(path) as f:
        docs.extend(d for d in yaml.safe_load_all(f) if d is not None)
print(json.dumps(docs))
