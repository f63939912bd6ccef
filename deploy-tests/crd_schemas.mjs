// Validates custom resources against the JSON schemas that the npm packages
// @kubernetes-models/gateway-api and @kubernetes-models/prometheus-operator
// ship (generated from the Gateway API's and the Prometheus operator's Go API
// types: field types, enums, patterns, lengths, required fields; not the CRDs'
// CEL rules, and unknown fields are not rejected: deploy-tests check those
// by hand). Used by deploy-tests (scripts/check-deploy installs the packages).
//
//   node deploy-tests/crd_schemas.mjs <node_modules dir> < objects.json
//
// Reads a JSON array of objects, prints a JSON array of
// {kind, name, error} (error null when valid); exit code 0.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const MODELS = {
  "gateway.networking.k8s.io/v1/HTTPRoute": ["@kubernetes-models/gateway-api", "gateway.networking.k8s.io/v1/HTTPRoute.js", "HTTPRoute"],
  "monitoring.coreos.com/v1/ServiceMonitor": ["@kubernetes-models/prometheus-operator", "monitoring.coreos.com/v1/ServiceMonitor.js", "ServiceMonitor"],
  "monitoring.coreos.com/v1/PrometheusRule": ["@kubernetes-models/prometheus-operator", "monitoring.coreos.com/v1/PrometheusRule.js", "PrometheusRule"],
};

const modules = process.argv[2];
const objects = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const o of objects) {
  const key = `${o.apiVersion}/${o.kind}`;
  const where = { kind: o.kind, name: o.metadata?.name };
  const model = MODELS[key];
  if (!model) {
    results.push({ ...where, error: `no schema for ${key}` });
    continue;
  }
  const [pkg, file, cls] = model;
  const mod = await import(pathToFileURL(join(modules, pkg, file)).href);
  try {
    new mod[cls](o).validate();
    results.push({ ...where, error: null });
  } catch (e) {
    results.push({ ...where, error: String(e.message ?? e) });
  }
}
console.log(JSON.stringify(results));
