#!/usr/bin/env python3
"""Writes JSON schemas for kubeconform, offline, from the API definitions themselves.

    tests/kubeconform-schemas.py OUT_DIR (--openapi SWAGGER_JSON | --crd CRD_YAML)...

--openapi: the Kubernetes OpenAPI v2 document of a release (api/openapi-spec/swagger.json of the
k8s.io/kubernetes module tests/cluster/deps.sh builds the cluster from), one schema per
group/version/kind. --crd: a CustomResourceDefinition, one schema per served version.

Files follow kubeconform's layout, `{kind}-{group}-{version}.json` (core group: `{kind}-{version}`,
group cut at its first dot), so `-schema-location 'OUT_DIR/{{ .ResourceKind }}{{ .KindSuffix }}.json'`
finds them. Schemas are strict, like kubectl's validation: an object with declared properties
accepts no others (a misspelt field fails). Each file is standalone: the definitions it needs are
copied under `definitions` (recursive types such as JSONSchemaProps stay references)."""
import argparse
import json
import sys
from pathlib import Path

import yaml  # PyYAML, installed with moto (tests/cluster/deps.sh)

# Types the API server accepts in more than one JSON form.
INT_OR_STRING = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
QUANTITY = {"oneOf": [{"type": "string"}, {"type": "number"}]}
OBJECT_FIELDS = {
    "apiVersion": {"type": "string"},
    "kind": {"type": "string"},
    "metadata": {"type": "object"},
}


def strict(schema):
    """Objects with declared properties refuse unknown ones; IntOrString takes both forms."""
    if not isinstance(schema, dict):
        return schema
    if schema.get("format") == "int-or-string" or schema.get("x-kubernetes-int-or-string") is True:
        return INT_OR_STRING
    out = dict(schema)
    for key in ("properties", "patternProperties", "definitions"):
        if isinstance(out.get(key), dict):
            out[key] = {name: strict(sub) for name, sub in out[key].items()}
    for key in ("additionalProperties", "items", "not"):
        if isinstance(out.get(key), dict):
            out[key] = strict(out[key])
    for key in ("allOf", "anyOf", "oneOf", "items"):
        if isinstance(out.get(key), list):
            out[key] = [strict(sub) for sub in out[key]]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def refs(node):
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"].rsplit("/", 1)[-1]
        for v in node.values():
            yield from refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from refs(v)


def file_name(kind, group, version):
    group = group.split(".")[0]
    return f"{kind}-{group}-{version}".lower() if group else f"{kind}-{version}".lower()


def from_openapi(path, out):
    definitions = json.loads(Path(path).read_text())["definitions"]
    definitions["io.k8s.apimachinery.pkg.api.resource.Quantity"] = QUANTITY
    written = 0
    for name, schema in definitions.items():
        for gvk in schema.get("x-kubernetes-group-version-kind", []):
            needed, todo = {}, list(refs(schema))
            while todo:
                ref = todo.pop()
                if ref not in needed and ref in definitions:
                    needed[ref] = strict(definitions[ref])
                    todo.extend(refs(definitions[ref]))
            doc = dict(strict(schema))
            doc["definitions"] = needed
            target = out / (file_name(gvk["kind"], gvk["group"], gvk["version"]) + ".json")
            target.write_text(json.dumps(doc))
            written += 1
    return written


def from_crd(path, out):
    written = 0
    for crd in yaml.safe_load_all(Path(path).read_text()):
        if not crd or crd.get("kind") != "CustomResourceDefinition":
            continue
        spec = crd["spec"]
        for version in spec["versions"]:
            schema = version.get("schema", {}).get("openAPIV3Schema")
            if schema is None or not version.get("served", True):
                continue
            # The API server adds the fields every object has; generated schemas may omit them.
            schema = dict(schema)
            schema["properties"] = {**OBJECT_FIELDS, **schema.get("properties", {})}
            name = file_name(spec["names"]["kind"], spec["group"], version["name"])
            (out / f"{name}.json").write_text(json.dumps(strict(schema)))
            written += 1
    return written


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--openapi", action="append", default=[])
    parser.add_argument("--crd", action="append", default=[])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    n = sum(from_openapi(p, args.out) for p in args.openapi)
    n += sum(from_crd(p, args.out) for p in args.crd)
    if n == 0:
        sys.exit("no schema written: no kinds in the given documents")
    print(f"{n} schemas in {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
