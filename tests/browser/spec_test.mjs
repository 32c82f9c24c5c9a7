// The web builder's spec mapping (web/spec.js) without a browser: a spec cloned into the wizard
// and written out again is the same spec with the same files. Run: node --test tests/browser/
import assert from 'node:assert/strict';
import test from 'node:test';
import { emptyState, specFromState, stateFromSpec, splitList } from '../../web/spec.js';

const FULL = {
  apiVersion: 'pok8s/v1',
  kind: 'Build',
  base: 'docker://docker.io/library/debian:12',
  arch: 'amd64',
  version: 'v0.3.0',
  kubernetes: { distribution: 'k3s', version: 'v1.31.2+k3s1', binary: 'http://127.0.0.1:8000/k3s', sha256: 'ab'.repeat(32) },
  packages: ['jq', 'curl=8.5.0-2'],
  toppings: {
    manifests: ['manifests/a.yaml', 'manifests/b.json'],
    wireguard: {
      interface: 'wg1', address: ['10.8.0.2/24', 'fd00::2/64'], listenPort: 51820,
      peers: [{ publicKey: 'C'.repeat(43) + '=', endpoint: 'vpn.example.com:51820', allowedIPs: ['10.8.0.0/24'], persistentKeepalive: 25 }],
    },
    cluster: { server: 'https://10.0.0.1:6443', token: 'K10abc::server:secret', caHash: 'sha256:' + 'a'.repeat(64) },
  },
  security: { trustedBoot: true, encryption: 'tpm', keys: 'keysets/prod' },
  artifacts: ['iso', 'raw'],
  cloudConfig: 'cloud-config.yaml',
  compression: { algorithm: 'xz', level: 6 },
};
const FILES = {
  'manifests/a.yaml': 'kind: ConfigMap\n',
  'manifests/b.json': '{"kind": "Secret"}\n',
  'cloud-config.yaml': '#cloud-config\nhostname: n\n',
};

test('a cloned spec is written out unchanged, with its files', () => {
  const state = stateFromSpec(FULL, FILES);
  const { spec, files } = specFromState(state, state.customBase);
  assert.deepEqual(spec, FULL);
  assert.deepEqual(files, FILES);
});

test('an empty wizard makes the smallest spec: no empty optional fields', () => {
  const state = emptyState();
  state.version = ' v1 ';
  const { spec, files } = specFromState(state, 'docker://debian:12');
  assert.deepEqual(spec, { apiVersion: 'pok8s/v1', kind: 'Build', base: 'docker://debian:12', version: 'v1', artifacts: ['iso'] });
  assert.deepEqual(files, {});
});

test('a manifest directory of a cloned spec becomes its files, sorted, and variant is dropped', () => {
  const state = stateFromSpec({ ...FULL, variant: 'standard', toppings: { manifests: ['./manifests'] } },
    { 'manifests/z.yml': 'z', 'manifests/a.yaml': 'a', 'manifests/sub/x.yaml': 'x', 'manifests/notes.txt': 'n' });
  assert.deepEqual(state.manifests.map((m) => m.name), ['a.yaml', 'z.yml']);
  const { spec } = specFromState(state, state.customBase);
  assert.equal(spec.variant, undefined);
  assert.deepEqual(spec.toppings.manifests, ['manifests/a.yaml', 'manifests/z.yml']);
});

test('packages are split on commas and spaces', () => {
  assert.deepEqual(splitList(' jq, curl  htop,,'), ['jq', 'curl', 'htop']);
});
