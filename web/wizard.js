// The build wizard (#/new): eight steps that fill one build spec (docs/build-spec.md), check it
// with the server and queue it. The spec is sent as JSON (JSON is YAML), its files beside it.
import { api, failure } from './api.js';
import { h, field, clear, fill, uid, downloadText, copyText } from './dom.js';
import { emptyState, emptyPeer, splitList, intOrNull, specFromState, stateFromSpec } from './spec.js';

const VERSION_RE = /^[A-Za-z0-9._+-]{1,128}$/;
const SHA256_RE = /^[0-9a-fA-F]{64}$/;
const CA_HASH_RE = /^(sha256:)?[0-9a-fA-F]{64}$/i;
const MANIFEST_RE = /^[A-Za-z0-9][A-Za-z0-9._-]*\.(yaml|yml|json)$/;
const PACKAGE_RE = /^[A-Za-z0-9][A-Za-z0-9._+\-:=~@]*$/;
const WG_KEY_RE = /^[A-Za-z0-9+/]{43}=$/;
const WG_INTERFACE_RE = /^[A-Za-z0-9_=+.-]{1,15}$/;
const SOURCE_RE = /^(docker:\/\/|oci:|oci-archive:|docker-archive:|dir:)\S+$/;
const CLOUD_CONFIG_EXAMPLE = '#cloud-config\nhostname: pok8s-node\nusers:\n  - name: admin\n    groups: [sudo]\n    ssh_authorized_keys:\n      - ssh-ed25519 AAAAC3Nza… you@example\n';
const STORAGE_KEY = 'pok8s.wizard';
const STEPS = [
  { title: 'Base', render: renderBase, check: checkBase },
  { title: 'Kubernetes', render: renderKubernetes, check: checkKubernetes },
  { title: 'Toppings', render: renderToppings, check: checkToppings },
  { title: 'Security', render: renderSecurity, check: checkSecurity },
  { title: 'Artifacts', render: renderArtifacts, check: checkArtifacts },
  { title: 'Cloud-config', render: renderCloudConfig, check: checkCloudConfig },
  { title: 'Review', render: renderReview, check: checkReview },
  { title: 'Build', render: renderBuild },
];
const REVIEW = 6;

let state = emptyState();
let step = 0;
let furthest = 0;
let ctx = null; // {templates, capabilities, keysets}, loaded each time the wizard is shown
let root = null;
let onBuilt = () => {};
let verdict = null; // the last answer of POST /specs/validate, for the current request
let cloudStatus = { text: null, valid: null, error: '', line: null, pending: null };
let cloudTimer = null;
let cloudSeq = 0;

restore();

// ---- persistence across reloads (sessionStorage: this tab only) ----

function save() {
  try {
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify({ state, step, furthest }));
  } catch {
    // too large (big manifests) or storage disabled: the wizard just does not survive a reload
  }
}

function restore() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(STORAGE_KEY) || 'null');
    if (saved && saved.state) {
      state = { ...emptyState(), ...saved.state };
      step = saved.step || 0;
      furthest = saved.furthest || step;
    }
  } catch {
    state = emptyState();
  }
}

export function resetWizard() {
  state = emptyState();
  step = 0;
  furthest = 0;
  verdict = null;
  cloudStatus = { text: null, valid: null, error: '', line: null, pending: null };
  save();
}

// ---- entry points ----

// Shows the wizard in `container`; `built(build)` is called once a build is queued or reused.
export async function showWizard(container, built) {
  root = container;
  onBuilt = built;
  fill(root, h('p', { class: 'muted' }, 'Loading…'));
  try {
    await loadContext();
  } catch (e) {
    fill(root, h('p', { class: 'error', role: 'alert', testid: 'wizard-error' },
      failure('load the builder\'s options', e)));
    return;
  }
  if (!location.hash.startsWith('#/new')) return; // navigated away meanwhile
  resolveBase();
  render();
}

// Loads a BuildRequest (GET /builds/{id}/spec) into the wizard, to clone and edit it.
export function loadRequest(request) {
  resetWizard();
  let spec = null;
  try {
    spec = JSON.parse(request.spec);
  } catch {
    spec = null;
  }
  if (!spec || typeof spec !== 'object' || Array.isArray(spec)) {
    state.raw = { spec: String(request.spec || ''), files: request.files || {} };
    step = REVIEW;
    furthest = STEPS.length - 1;
  } else {
    state = stateFromSpec(spec, request.files || {});
    furthest = STEPS.length - 1;
  }
  save();
}

async function loadContext() {
  const [templates, capabilities, keysets] = await Promise.all([
    api('GET', '/templates'),
    api('GET', '/capabilities'),
    // Key sets are optional for a build: a server without any (or refusing the list) is fine.
    api('GET', '/keysets').catch(() => ({ keysets: [] })),
  ]);
  ctx = {
    templates: templates.templates || [],
    capabilities: capabilities || {},
    keysets: keysets.keysets || [],
  };
}

// A cloned base that is a template's base shows as that template.
function resolveBase() {
  if (state.baseMode === 'custom' && state.customBase) {
    const t = ctx.templates.find((x) => x.base === state.customBase);
    if (t) {
      state.baseMode = 'template';
      state.template = t.name;
    }
  }
  if (state.baseMode === 'template' && !ctx.templates.some((t) => t.name === state.template)) state.template = '';
}

// ---- the frame: step indicator, the step, Back/Next ----

function render() {
  if (!root) return;
  if (state.raw && step < REVIEW) step = REVIEW;
  const current = STEPS[step];
  const error = h('p', { class: 'error', role: 'alert', testid: 'step-error', hidden: true });
  const back = h('button', { type: 'button', testid: 'back', disabled: step === 0 || (state.raw && step === REVIEW), onclick: () => go(step - 1) }, '← Back');
  const next = step < STEPS.length - 1 ? h('button', { type: 'submit', class: 'primary', testid: 'next' }, 'Next →') : null;
  const form = h('form', {
    class: 'step', novalidate: true, 'aria-labelledby': 'step-title',
    onsubmit: async (e) => {
      e.preventDefault();
      if (next) next.disabled = true;
      try {
        const problem = current.check ? await current.check() : null;
        if (problem) {
          error.textContent = problem;
          error.hidden = false;
          return;
        }
        go(step + 1);
      } finally {
        if (next) next.disabled = false;
      }
    },
  },
  h('h2', { id: 'step-title' }, `${step + 1}. ${current.title}`),
  current.render(),
  error,
  h('div', { class: 'nav' }, back, next));

  fill(root,
    h('div', { class: 'wizard-head' },
      h('h1', {}, state.raw ? 'Build a cloned spec' : 'New build'),
      h('button', { type: 'button', class: 'link', testid: 'wizard-reset', onclick: () => { resetWizard(); render(); } }, 'Start over')),
    stepIndicator(),
    form);
  save();
}

function go(target) {
  if (target < 0 || target >= STEPS.length) return;
  step = target;
  furthest = Math.max(furthest, step);
  render();
  window.scrollTo(0, 0);
}

function stepIndicator() {
  return h('ol', { class: 'steps', testid: 'steps', 'aria-label': 'Steps' },
    STEPS.map((s, i) => {
      const reachable = i <= furthest && !(state.raw && i < REVIEW);
      return h('li', { class: i === step ? 'current' : i < step && reachable ? 'done' : '', 'aria-current': i === step ? 'step' : null },
        h('button', { type: 'button', class: 'link', disabled: !reachable || i === step, testid: `step-${i + 1}`, onclick: () => go(i) },
          h('span', { class: 'num' }, String(i + 1)), ' ', s.title));
    }));
}

// ---- small builders for inputs bound to the state ----

function textInput(get, set, attrs = {}) {
  const input = h('input', { type: 'text', autocomplete: 'off', spellcheck: 'false', ...attrs, value: get() });
  input.addEventListener('input', () => {
    set(input.value);
    save();
  });
  return input;
}

function textArea(get, set, attrs = {}) {
  const area = h('textarea', { spellcheck: 'false', ...attrs });
  area.value = get();
  area.addEventListener('input', () => {
    set(area.value);
    save();
  });
  return area;
}

function checkbox(labelText, get, set, attrs = {}, reason = null) {
  const id = uid('c');
  const input = h('input', { type: 'checkbox', id, ...attrs, checked: get() });
  input.addEventListener('change', () => {
    set(input.checked);
    save();
  });
  return h('div', { class: 'check' + (attrs.disabled ? ' disabled' : '') }, input, h('label', { for: id }, labelText), reason);
}

// The reason an option cannot be built, next to it.
function reasonOf(option, testid) {
  if (!option || option.buildable !== false) return null;
  return h('small', { class: 'reason', testid }, option.reason || 'not buildable yet');
}

function option(list, name) {
  return (list || []).find((o) => o.name === name);
}

// ---- step 1: base ----

function baseRef() {
  if (state.baseMode === 'custom') return state.customBase.trim();
  const t = ctx.templates.find((x) => x.name === state.template);
  return t ? t.base : '';
}

function renderBase() {
  const caps = ctx.capabilities;
  const customInput = textInput(() => state.customBase, (v) => {
    state.customBase = v;
    if (state.baseMode !== 'custom') {
      state.baseMode = 'custom';
      customRadio.checked = true;
    }
  }, { testid: 'base-ref', placeholder: 'docker://docker.io/library/debian:12', 'aria-label': 'Image reference' });
  const customRadio = h('input', {
    type: 'radio', name: 'base', id: uid('b'), testid: 'base-custom', value: '',
    checked: state.baseMode === 'custom',
    onchange: () => { state.baseMode = 'custom'; save(); customInput.focus(); },
  });
  const cards = ctx.templates.map((t) => {
    const id = uid('t');
    return h('div', { class: 'card' },
      h('input', {
        type: 'radio', name: 'base', id, value: t.name, testid: `template-${t.name}`,
        checked: state.baseMode === 'template' && state.template === t.name,
        onchange: () => { state.baseMode = 'template'; state.template = t.name; save(); },
      }),
      h('label', { for: id }, h('strong', {}, t.title || t.name), h('code', {}, t.base)));
  });
  return h('div', {},
    h('fieldset', {},
      h('legend', {}, 'Start from'),
      h('div', { class: 'cards', testid: 'templates' }, cards,
        h('div', { class: 'card custom' }, customRadio,
          h('label', { for: customRadio.id }, h('strong', {}, 'Any image reference')),
          customInput,
          h('small', { class: 'hint' }, caps.localSources === false
            ? 'This server builds from registries only: docker://REGISTRY/REPO[:TAG|@DIGEST].'
            : 'docker://…, oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE or dir:PATH')))),
    field('OS version', textInput(() => state.version, (v) => { state.version = v; },
      { testid: 'os-version', placeholder: 'v1.0.0', required: true }),
    'Required. Letters, digits and . _ + - (names the artifacts).'));
}

function checkBase() {
  if (state.baseMode === 'template' && !state.template) return 'Choose a template or give an image reference.';
  if (state.baseMode === 'custom') {
    const ref = state.customBase.trim();
    if (!ref) return 'Give the image reference to build from.';
    if (!SOURCE_RE.test(ref)) return `"${ref}" is not a source name: it starts with docker://, oci:, oci-archive:, docker-archive: or dir:.`;
    if (ctx.capabilities.localSources === false && !ref.startsWith('docker://')) return 'This server builds from registries only: use a docker:// reference.';
  }
  const v = state.version.trim();
  if (!v) return 'The OS version is required (e.g. v1.0.0).';
  if (!VERSION_RE.test(v)) return 'The OS version holds only letters, digits and . _ + - (at most 128).';
  return null;
}

// ---- step 2: Kubernetes ----

function defaultBinary(distribution, version) {
  const v = encodeURIComponent(version.trim());
  if (!v) return '';
  if (distribution === 'k3s') return `https://github.com/k3s-io/k3s/releases/download/${v}/k3s`;
  if (distribution === 'k0s') return `https://github.com/k0sproject/k0s/releases/download/${v}/k0s-${v}-amd64`;
  return '';
}

function kubernetesOptions() {
  const list = (ctx.capabilities.kubernetes || []).filter((o) => o.name !== 'none');
  return [{ name: 'none', buildable: true }, ...list];
}

function renderKubernetes() {
  const k = state.k8s;
  const binary = textInput(() => k.binary, (v) => { k.binary = v; k.binaryEdited = v.trim() !== ''; },
    { testid: 'k8s-binary', type: 'url', placeholder: 'https://…' });
  const version = textInput(() => k.version, (v) => {
    k.version = v;
    if (!k.binaryEdited) {
      k.binary = defaultBinary(k.distribution, v);
      binary.value = k.binary;
    }
  }, { testid: 'k8s-version', placeholder: k.distribution === 'k0s' ? 'v1.31.2+k0s.0' : 'v1.31.2+k3s1' });
  const versionField = field(`${k.distribution === 'none' ? 'Kubernetes' : k.distribution} version`, version);
  const versionLabel = versionField.querySelector('label');
  const radios = kubernetesOptions().map((o) => {
    const id = uid('k');
    const selected = k.distribution === o.name;
    return h('div', { class: 'check' + (o.buildable === false ? ' disabled' : '') },
      h('input', {
        type: 'radio', name: 'k8s', id, value: o.name, testid: `k8s-${o.name}`, checked: selected,
        disabled: o.buildable === false && !selected,
        onchange: () => {
          k.distribution = o.name;
          if (!k.binaryEdited) k.binary = defaultBinary(k.distribution, k.version);
          binary.value = k.binary;
          versionLabel.textContent = `${k.distribution} version`;
          version.placeholder = k.distribution === 'k0s' ? 'v1.31.2+k0s.0' : 'v1.31.2+k3s1';
          details.hidden = k.distribution === 'none';
          save();
        },
      }),
      h('label', { for: id }, o.name === 'none' ? 'None (the core OS, no Kubernetes)' : o.name),
      reasonOf(o, `k8s-reason-${o.name}`));
  });
  const details = h('div', { hidden: k.distribution === 'none', testid: 'k8s-details' },
    versionField,
    field('Binary URL', binary, 'Where the binary is downloaded from (http or https); filled in from the version until you edit it.'),
    field('Binary sha256', textInput(() => k.sha256, (v) => { k.sha256 = v; },
      { testid: 'k8s-sha256', placeholder: '64 hex digits', maxlength: 64 }), 'The download must match it.'));
  return h('div', {}, h('fieldset', {}, h('legend', {}, 'Distribution'), radios), details);
}

function checkKubernetes() {
  const k = state.k8s;
  if (k.distribution === 'none') return null;
  const o = option(kubernetesOptions(), k.distribution);
  if (!o) return `${k.distribution} is not offered by this server.`;
  if (o.buildable === false) return `${k.distribution} cannot be built yet: ${o.reason || 'not buildable'}`;
  if (!k.version.trim()) return `Give the ${k.distribution} version.`;
  if (!VERSION_RE.test(k.version.trim())) return 'The Kubernetes version holds only letters, digits and . _ + -.';
  if (!/^https?:\/\/\S+$/.test(k.binary.trim())) return 'The binary URL must start with https:// or http://.';
  if (!SHA256_RE.test(k.sha256.trim())) return 'The binary sha256 is 64 hex digits.';
  return null;
}

// ---- step 3: toppings ----

function renderToppings() {
  return h('div', {},
    field('Extra packages', textInput(() => state.packages, (v) => { state.packages = v; },
      { testid: 'packages', placeholder: 'htop curl' }), 'Separated by commas or spaces; installed with the image\'s own package manager.'),
    renderManifests(),
    renderWireguard(),
    renderCluster());
}

function renderManifests() {
  const rows = state.manifests.map((m, i) => {
    const name = textInput(() => m.name, (v) => { m.name = v; }, { testid: `manifest-name-${i}`, placeholder: 'metallb.yaml' });
    const content = textArea(() => m.content, (v) => { m.content = v; }, { testid: `manifest-content-${i}`, rows: 8, class: 'code' });
    const picker = h('input', {
      type: 'file', accept: '.yaml,.yml,.json', testid: `manifest-file-${i}`,
      onchange: async () => {
        const file = picker.files[0];
        if (!file) return;
        m.content = await file.text();
        m.name = file.name;
        save();
        render();
      },
    });
    return h('div', { class: 'manifest', testid: `manifest-${i}` },
      field('File name', name, 'Ends in .yaml, .yml or .json'),
      field('Or read a file', picker),
      field('Content', content),
      h('button', { type: 'button', class: 'link danger', testid: `manifest-remove-${i}`,
        onclick: () => { state.manifests.splice(i, 1); save(); render(); } }, 'Remove this manifest'));
  });
  return h('fieldset', {},
    h('legend', {}, 'Kubernetes manifests and CRDs'),
    h('p', { class: 'hint' }, 'Deployed when the cluster starts.'),
    rows,
    h('button', { type: 'button', testid: 'add-manifest',
      onclick: () => { state.manifests.push({ name: '', content: '' }); save(); render(); } }, '+ Add a manifest'));
}

function renderWireguard() {
  const wg = state.wireguard;
  const details = h('div', { hidden: !wg.enabled, testid: 'wireguard-details' },
    h('div', { class: 'row' },
      field('Interface', textInput(() => wg.interface, (v) => { wg.interface = v; }, { testid: 'wg-interface', placeholder: 'wg0' })),
      field('Listen port', textInput(() => wg.listenPort, (v) => { wg.listenPort = v; }, { testid: 'wg-listen-port', inputmode: 'numeric', placeholder: 'random' }))),
    field('Addresses', textInput(() => wg.address, (v) => { wg.address = v; }, { testid: 'wg-address', placeholder: '10.8.0.2/24' }), 'CIDRs, separated by commas or spaces.'),
    field('Private key (optional)', textInput(() => wg.privateKey, (v) => { wg.privateKey = v; }, { testid: 'wg-private-key', placeholder: 'made by each node on its first boot' }),
      'Leave empty so that every node makes its own key and the image holds no secret.'),
    wg.peers.map((p, i) => h('fieldset', { class: 'peer', testid: `wg-peer-${i}` },
      h('legend', {}, `Peer ${i + 1}`),
      field('Public key', textInput(() => p.publicKey, (v) => { p.publicKey = v; }, { testid: `wg-peer-public-key-${i}` })),
      field('Endpoint', textInput(() => p.endpoint, (v) => { p.endpoint = v; }, { testid: `wg-peer-endpoint-${i}`, placeholder: 'vpn.example.com:51820' })),
      field('Allowed IPs', textInput(() => p.allowedIPs, (v) => { p.allowedIPs = v; }, { testid: `wg-peer-allowed-ips-${i}`, placeholder: '10.8.0.0/24' })),
      h('div', { class: 'row' },
        field('Persistent keepalive (s)', textInput(() => p.persistentKeepalive, (v) => { p.persistentKeepalive = v; }, { testid: `wg-peer-keepalive-${i}`, inputmode: 'numeric', placeholder: '25' })),
        field('Preshared key (optional)', textInput(() => p.presharedKey, (v) => { p.presharedKey = v; }, { testid: `wg-peer-preshared-key-${i}` }))),
      wg.peers.length > 1 ? h('button', { type: 'button', class: 'link danger', testid: `wg-remove-peer-${i}`,
        onclick: () => { wg.peers.splice(i, 1); save(); render(); } }, 'Remove this peer') : null)),
    h('button', { type: 'button', testid: 'wg-add-peer', onclick: () => { wg.peers.push(emptyPeer()); save(); render(); } }, '+ Add a peer'));
  return h('fieldset', {}, h('legend', {}, 'WireGuard VPN'),
    checkbox('Bring up a WireGuard interface at boot', () => wg.enabled, (v) => { wg.enabled = v; details.hidden = !v; }, { testid: 'wireguard-enabled' }),
    details);
}

function renderCluster() {
  const c = state.cluster;
  const details = h('div', { hidden: !c.enabled, testid: 'cluster-details' },
    field('API server URL', textInput(() => c.server, (v) => { c.server = v; }, { testid: 'cluster-server', placeholder: 'https://10.0.0.1:6443' })),
    field('Join token', textInput(() => c.token, (v) => { c.token = v; }, { testid: 'cluster-token' }), 'Stored in the image: keep the spec private.'),
    field('CA hash (optional)', textInput(() => c.caHash, (v) => { c.caHash = v; }, { testid: 'cluster-ca-hash', placeholder: 'sha256:…' })));
  return h('fieldset', {}, h('legend', {}, 'Join an existing cluster'),
    checkbox('Join an existing control plane (e.g. a Kamaji tenant) instead of starting one', () => c.enabled, (v) => { c.enabled = v; details.hidden = !v; }, { testid: 'cluster-enabled' }),
    details);
}

function checkToppings() {
  for (const p of splitList(state.packages))
    if (!PACKAGE_RE.test(p)) return `"${p}" is not a package name (letters, digits and . _ + - : = ~ @, starting with a letter or digit).`;
  if (state.k8s.distribution === 'none' && (state.manifests.length || state.cluster.enabled))
    return 'Manifests and joining a cluster need Kubernetes: choose k3s or k0s in step 2, or remove them.';
  const limits = ctx.capabilities.limits || {};
  if (limits.maxFiles && state.manifests.length + 1 > limits.maxFiles) return `At most ${limits.maxFiles - 1} manifests fit in one request on this server.`;
  const names = new Set();
  for (const [i, m] of state.manifests.entries()) {
    if (limits.maxFileBytes && new Blob([m.content]).size > limits.maxFileBytes) return `Manifest ${i + 1} is larger than the ${limits.maxFileBytes} bytes this server accepts per file.`;
    const n = m.name.trim();
    if (!MANIFEST_RE.test(n)) return `Manifest ${i + 1}: the file name must end in .yaml, .yml or .json (letters, digits, . _ -).`;
    if (names.has(n)) return `Manifest ${i + 1}: ${n} is given twice.`;
    names.add(n);
    if (!m.content.trim()) return `Manifest ${i + 1} (${n}) is empty.`;
  }
  const wg = state.wireguard;
  if (wg.enabled) {
    if (wg.interface.trim() && !WG_INTERFACE_RE.test(wg.interface.trim())) return 'WireGuard: the interface name is 1 to 15 of A-Z a-z 0-9 _ = + . -';
    if (!splitList(wg.address).length) return 'WireGuard: give at least one address (e.g. 10.8.0.2/24).';
    if (wg.listenPort.trim()) {
      const port = intOrNull(wg.listenPort);
      if (port === null || port < 1 || port > 65535) return 'WireGuard: the listen port is 1 to 65535.';
    }
    if (wg.privateKey.trim() && !WG_KEY_RE.test(wg.privateKey.trim())) return 'WireGuard: the private key is 44 characters of base64 ending in = (wg genkey).';
    if (!wg.peers.length) return 'WireGuard: add at least one peer.';
    for (const [i, p] of wg.peers.entries()) {
      if (!WG_KEY_RE.test(p.publicKey.trim())) return `WireGuard peer ${i + 1}: the public key is 44 characters of base64 ending in = (wg pubkey).`;
      if (!splitList(p.allowedIPs).length) return `WireGuard peer ${i + 1}: give at least one allowed IP range.`;
      if (p.persistentKeepalive.trim()) {
        const k = intOrNull(p.persistentKeepalive);
        if (k === null || k < 1 || k > 65535) return `WireGuard peer ${i + 1}: the keepalive is 1 to 65535 seconds.`;
      }
      if (p.presharedKey.trim() && !WG_KEY_RE.test(p.presharedKey.trim())) return `WireGuard peer ${i + 1}: the preshared key is 44 characters of base64 ending in = (wg genpsk).`;
    }
  }
  const c = state.cluster;
  if (c.enabled) {
    if (!/^https:\/\/\S+$/.test(c.server.trim())) return 'Cluster: the API server URL starts with https://';
    if (!c.token.trim() || /\s/.test(c.token.trim())) return 'Cluster: the join token is one word.';
    if (c.caHash.trim() && !CA_HASH_RE.test(c.caHash.trim())) return 'Cluster: the CA hash is sha256: and 64 hex digits.';
  }
  return null;
}

// ---- step 4: security ----

function encryptionOptions() {
  const list = ctx.capabilities.encryption || [];
  return list.some((o) => o.name === 'none') ? list : [{ name: 'none', buildable: true }, ...list];
}

function renderSecurity() {
  const s = state.security;
  const tb = ctx.capabilities.trustedBoot || { name: 'trustedBoot', buildable: false, reason: 'not reported by the server' };
  const encryption = encryptionOptions().map((o) => {
    const id = uid('e');
    const selected = s.encryption === o.name;
    return h('div', { class: 'check' + (o.buildable === false ? ' disabled' : '') },
      h('input', { type: 'radio', name: 'encryption', id, value: o.name, testid: `encryption-${o.name}`, checked: selected,
        disabled: o.buildable === false && !selected, onchange: () => { s.encryption = o.name; save(); } }),
      h('label', { for: id }, o.name),
      reasonOf(o, `encryption-reason-${o.name}`));
  });
  const keysOption = ctx.capabilities.keys || { name: 'keys', buildable: true };
  const keyset = h('select', { testid: 'keyset', disabled: keysOption.buildable === false && !s.keys,
    onchange: () => { s.keys = keyset.value; save(); } },
  h('option', { value: '' }, '(none)'),
  ctx.keysets.map((k) => h('option', { value: k.name }, k.name)),
  s.keys && !ctx.keysets.some((k) => k.name === s.keys) ? h('option', { value: s.keys }, `${s.keys} (not on this server)`) : null);
  keyset.value = s.keys;
  return h('div', {},
    h('fieldset', {}, h('legend', {}, 'Trusted boot'),
      checkbox('Boot through a signed UKI with Secure Boot and measured boot', () => s.trustedBoot,
        (v) => { s.trustedBoot = v; },
        { testid: 'trusted-boot', disabled: tb.buildable === false && !s.trustedBoot },
        reasonOf(tb, 'trusted-boot-reason'))),
    h('fieldset', {}, h('legend', {}, 'Disk encryption'), encryption),
    h('fieldset', {}, h('legend', {}, 'Secure Boot keys'),
      field('Key set', keyset, ctx.keysets.length ? 'Signs the UKI of a trusted boot.' : 'No key set is stored on this server.'),
      reasonOf(keysOption, 'keyset-reason')));
}

function checkSecurity() {
  const s = state.security;
  const tb = ctx.capabilities.trustedBoot;
  if (s.trustedBoot && tb && tb.buildable === false) return `Trusted boot cannot be built yet: ${tb.reason}`;
  const e = option(encryptionOptions(), s.encryption);
  if (!e) return `Encryption ${s.encryption} is not offered by this server.`;
  if (e.buildable === false) return `Encryption ${s.encryption} cannot be built yet: ${e.reason}`;
  const keys = ctx.capabilities.keys;
  if (s.keys && keys && keys.buildable === false) return `A key set cannot be used yet: ${keys.reason}`;
  return null;
}

// ---- step 5: artifacts ----

function renderArtifacts() {
  const options = ctx.capabilities.artifacts || [{ name: 'iso', buildable: true }];
  const boxes = options.map((o) => {
    const selected = state.artifacts.includes(o.name);
    return checkbox(o.name, () => selected, (v) => {
      state.artifacts = state.artifacts.filter((a) => a !== o.name);
      if (v) state.artifacts.push(o.name);
    }, { testid: `artifact-${o.name}`, value: o.name, disabled: o.buildable === false && !selected },
    reasonOf(o, `artifact-reason-${o.name}`));
  });
  const algorithms = ctx.capabilities.compression || ['zstd', 'xz', 'gzip'];
  const compression = h('select', { testid: 'compression', onchange: () => { state.compression = compression.value; state.compressionLevel = null; save(); } },
    h('option', { value: '' }, 'default (zstd)'),
    algorithms.map((a) => h('option', { value: a }, a)));
  compression.value = state.compression;
  return h('div', {},
    h('fieldset', { testid: 'artifacts' }, h('legend', {}, 'Artifacts to make (at least one)'), boxes),
    field('Root filesystem compression', compression));
}

function checkArtifacts() {
  if (!state.artifacts.length) return 'Choose at least one artifact.';
  for (const a of state.artifacts) {
    const o = option(ctx.capabilities.artifacts, a);
    if (o && o.buildable === false) return `${a} cannot be built yet: ${o.reason}`;
  }
  return null;
}

// ---- step 6: cloud-config ----

function renderCloudConfig() {
  const status = h('p', { class: 'status', testid: 'cloud-config-status', 'aria-live': 'polite' });
  const area = textArea(() => state.cloudConfig, (v) => {
    state.cloudConfig = v;
    scheduleCloudCheck(status);
  }, { testid: 'cloud-config', class: 'code', rows: 18, placeholder: '#cloud-config\nhostname: my-node' });
  const gotoLine = (line) => {
    const lines = area.value.split('\n');
    const start = lines.slice(0, line - 1).reduce((n, l) => n + l.length + 1, 0);
    area.focus();
    area.setSelectionRange(start, start + (lines[line - 1] || '').length);
  };
  status.gotoLine = gotoLine;
  showCloudStatus(status);
  if (state.cloudConfig.trim() && cloudStatus.text !== state.cloudConfig) scheduleCloudCheck(status, 0);
  return h('div', {},
    field('Cloud-config (the image\'s default configuration)', area, 'Starts with #cloud-config. Leave it empty for none.'),
    status,
    h('div', { class: 'buttons' },
      h('button', { type: 'button', testid: 'cloud-config-example', onclick: () => {
        area.value = CLOUD_CONFIG_EXAMPLE;
        area.dispatchEvent(new Event('input'));
      } }, 'Insert an example'),
      h('button', { type: 'button', testid: 'cloud-config-clear', onclick: () => {
        area.value = '';
        area.dispatchEvent(new Event('input'));
      } }, 'Clear')));
}

function showCloudStatus(status) {
  status.className = 'status';
  const text = state.cloudConfig;
  if (!text.trim()) {
    status.textContent = 'Empty: the image gets no cloud-config.';
    return;
  }
  if (cloudStatus.text !== text || cloudStatus.valid === null) {
    status.textContent = 'Checking…';
    return;
  }
  if (cloudStatus.valid) {
    status.className = 'status ok';
    const warnings = cloudStatus.warnings || [];
    if (!warnings.length) {
      status.textContent = '✓ valid';
      return;
    }
    // Accepted as Kairos accepts it; what pok8s does not act on is named.
    status.replaceChildren(`✓ valid, ${warnings.length} warning${warnings.length > 1 ? 's' : ''}:`,
      h('ul', { testid: 'cloud-config-warnings' }, ...warnings.map((w) => h('li', {}, w))));
    return;
  }
  status.className = 'status bad';
  const error = cloudStatus.error || 'not valid';
  const line = cloudStatus.line;
  status.replaceChildren(
    /\bline \d+/i.test(error) || !line ? '' : `Line ${line}: `, error, ' ',
    line ? h('button', { type: 'button', class: 'link goto', testid: 'cloud-config-goto', onclick: () => status.gotoLine && status.gotoLine(line) }, `Go to line ${line}`) : null);
}

function scheduleCloudCheck(status, delay = 400) {
  clearTimeout(cloudTimer);
  showCloudStatus(status);
  if (!state.cloudConfig.trim()) return;
  cloudTimer = setTimeout(() => validateCloudConfig().then(() => { if (status.isConnected) showCloudStatus(status); }), delay);
}

// Validates the current text (once per text); resolves when its verdict is known.
function validateCloudConfig() {
  const text = state.cloudConfig;
  if (cloudStatus.text === text && cloudStatus.valid !== null) return Promise.resolve();
  if (cloudStatus.pending && cloudStatus.pendingText === text) return cloudStatus.pending;
  const seq = ++cloudSeq;
  const pending = api('POST', '/cloud-config/validate', { text })
    .then((r) => ({ valid: !!r.valid, error: r.error || '', line: r.line || null, warnings: r.warnings || [] }))
    .catch((e) => ({ valid: false, error: e.message, line: null, warnings: [] }))
    .then((r) => {
      if (seq === cloudSeq) cloudStatus = { text, ...r, pending: null };
    });
  cloudStatus = { ...cloudStatus, pending, pendingText: text };
  return pending;
}

async function checkCloudConfig() {
  if (!state.cloudConfig.trim()) return null;
  clearTimeout(cloudTimer);
  await validateCloudConfig();
  if (cloudStatus.text === state.cloudConfig && cloudStatus.valid === false)
    return `The cloud-config is not valid${cloudStatus.line ? ` (line ${cloudStatus.line})` : ''}: ${cloudStatus.error}`;
  return null;
}

// ---- the request ----

// The BuildRequest: {spec: the spec as text, files: {relative path: text}}.
export function buildRequest() {
  if (state.raw) return { spec: state.raw.spec, files: { ...state.raw.files } };
  const { spec, files } = specFromState(state, baseRef());
  return { spec: JSON.stringify(spec, null, 2) + '\n', files };
}

// ---- step 7: review ----

function renderReview() {
  const box = h('div', { class: 'review', testid: 'review' }, h('p', { class: 'muted', testid: 'review-checking' }, 'Checking the spec with the server…'));
  const request = buildRequest();
  const key = JSON.stringify(request);
  const show = (v) => fill(box, ...reviewBody(v, request).filter(Boolean));
  if (verdict && verdict.key === key) show(verdict);
  else {
    api('POST', '/specs/validate', request)
      .then((r) => ({ ...r, key }))
      .catch((e) => ({ valid: false, error: e.message, key, failed: true }))
      .then((v) => {
        verdict = v;
        if (box.isConnected) show(v);
      });
  }
  return h('div', {},
    state.raw ? h('p', { class: 'notice', testid: 'review-raw' },
      'This spec was written as YAML, not by the wizard: it is shown read-only and built as it is. "Start over" opens an empty wizard.') : null,
    box);
}

function reviewBody(v, request) {
  const out = [];
  out.push(h('p', { class: v.valid ? 'status ok' : 'status bad', testid: 'review-valid' },
    v.valid ? (v.unbuildable && v.unbuildable.length ? 'The spec is valid, but cannot be built yet:' : '✓ The spec is valid.') : 'The spec is refused:'));
  if (v.error) out.push(h('p', { class: 'error', role: 'alert', testid: 'review-error' }, v.error));
  if (v.unbuildable && v.unbuildable.length)
    out.push(h('ul', { class: 'error', testid: 'review-unbuildable' }, v.unbuildable.map((u) => h('li', {}, u))));
  if (v.specId) out.push(h('p', {}, 'Build id: ', h('code', { testid: 'review-spec-id' }, v.specId),
    v.baseDigest ? h('small', { class: 'hint' }, ` (base ${v.baseDigest})`) : null));
  const yaml = v.spec || (state.raw ? state.raw.spec : '');
  if (yaml) {
    const copied = h('span', { class: 'muted', 'aria-live': 'polite' });
    out.push(
      h('div', { class: 'buttons' },
        h('button', { type: 'button', testid: 'copy-yaml', onclick: async () => { copied.textContent = (await copyText(yaml)) ? 'Copied.' : 'Copy failed: select the text instead.'; } }, 'Copy YAML'),
        h('button', { type: 'button', testid: 'download-spec', onclick: () => downloadText('spec.yaml', yaml) }, 'Download spec.yaml'),
        Object.keys(request.files).sort().map((name) => h('button', { type: 'button', testid: `download-file-${name}`, onclick: () => downloadText(name, request.files[name]) }, `Download ${name}`)),
        copied),
      Object.keys(request.files).length ? h('p', { class: 'hint' }, 'pok8s build -f spec.yaml reads these files next to the spec: ', Object.keys(request.files).sort().join(', ')) : null,
      h('pre', { class: 'code', testid: 'review-yaml' }, yaml));
  }
  return out;
}

async function checkReview() {
  const key = JSON.stringify(buildRequest());
  if (!verdict || verdict.key !== key) return 'The server has not checked this spec yet; wait a moment.';
  if (!verdict.valid) return `Fix the spec first: ${verdict.error || 'refused'}`;
  if (verdict.unbuildable && verdict.unbuildable.length) return `This spec cannot be built yet: ${verdict.unbuildable.join('; ')}`;
  return null;
}

// ---- step 8: build ----

function renderBuild() {
  const request = buildRequest();
  const message = h('p', { class: 'error', role: 'alert', testid: 'build-error', hidden: true });
  const button = h('button', {
    type: 'button', class: 'primary', testid: 'build-submit',
    onclick: async () => {
      button.disabled = true;
      message.hidden = true;
      try {
        const build = await api('POST', '/builds', request);
        onBuilt(build);
      } catch (e) {
        message.textContent = failure('queue the build', e);
        message.hidden = false;
        button.disabled = false;
      }
    },
  }, 'Build');
  const summary = state.raw ? [] : [
    ['Base', baseRef()], ['Version', state.version],
    ['Kubernetes', state.k8s.distribution === 'none' ? 'none' : `${state.k8s.distribution} ${state.k8s.version}`],
    ['Artifacts', state.artifacts.join(', ')],
  ];
  return h('div', {},
    verdict && verdict.specId ? h('p', {}, 'Build id ', h('code', {}, verdict.specId), '. The same spec built before is reused, not built again.') : null,
    summary.length ? h('dl', { class: 'summary' }, summary.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])) : null,
    button, message);
}
