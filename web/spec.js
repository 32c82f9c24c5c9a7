// The wizard's state and the build spec it stands for (docs/build-spec.md): the spec object and
// the files it names are made from the state, and a cloned spec is read back into a state.

export const CLOUD_CONFIG_FILE = 'cloud-config.yaml';

// Top-level spec keys the wizard edits; others (arch) are kept as they were when cloning.
// variant and model are dropped: their only valid values are the defaults the server fills in.
const EDITED_KEYS = ['apiVersion', 'kind', 'base', 'version', 'kubernetes', 'packages', 'toppings',
  'security', 'artifacts', 'cloudConfig', 'compression', 'variant', 'model'];

export function emptyState() {
  return {
    baseMode: 'template', template: '', customBase: '', version: '',
    k8s: { distribution: 'none', version: '', binary: '', sha256: '', binaryEdited: false },
    packages: '',
    manifests: [],
    wireguard: { enabled: false, interface: 'wg0', address: '', listenPort: '', privateKey: '', peers: [emptyPeer()] },
    cluster: { enabled: false, server: '', token: '', caHash: '' },
    security: { trustedBoot: false, encryption: 'none', keys: '' },
    artifacts: ['iso'], compression: '', compressionLevel: null,
    cloudConfig: '',
    extras: {},
    raw: null, // {spec, files}: a cloned spec written as YAML, shown read-only and built as it is
  };
}

export function emptyPeer() {
  return { publicKey: '', endpoint: '', allowedIPs: '', persistentKeepalive: '', presharedKey: '' };
}

// "a, b c" → ['a', 'b', 'c'].
export function splitList(text) {
  return String(text || '').split(/[\s,]+/).filter(Boolean);
}

export function intOrNull(text) {
  const s = String(text ?? '').trim();
  return /^\d+$/.test(s) ? Number(s) : null;
}

// The spec object and its files {relative path: text}; `base` is the source name chosen.
export function specFromState(s, base) {
  const spec = { apiVersion: 'pok8s/v1', kind: 'Build', base };
  for (const [k, v] of Object.entries(s.extras || {})) if (!EDITED_KEYS.includes(k)) spec[k] = v;
  spec.version = s.version.trim();
  const files = {};
  if (s.k8s.distribution !== 'none') {
    spec.kubernetes = { distribution: s.k8s.distribution, version: s.k8s.version.trim(), binary: s.k8s.binary.trim(), sha256: s.k8s.sha256.trim().toLowerCase() };
  }
  const packages = splitList(s.packages);
  if (packages.length) spec.packages = packages;
  const toppings = {};
  if (s.manifests.length) {
    toppings.manifests = s.manifests.map((m) => {
      const path = `manifests/${m.name.trim()}`;
      files[path] = m.content;
      return path;
    });
  }
  if (s.wireguard.enabled) {
    const wg = s.wireguard;
    const w = {};
    if (wg.interface.trim()) w.interface = wg.interface.trim();
    w.address = splitList(wg.address);
    if (intOrNull(wg.listenPort) !== null) w.listenPort = intOrNull(wg.listenPort);
    if (wg.privateKey.trim()) w.privateKey = wg.privateKey.trim();
    w.peers = wg.peers.map((p) => {
      const peer = { publicKey: p.publicKey.trim() };
      if (p.endpoint.trim()) peer.endpoint = p.endpoint.trim();
      peer.allowedIPs = splitList(p.allowedIPs);
      if (intOrNull(p.persistentKeepalive) !== null) peer.persistentKeepalive = intOrNull(p.persistentKeepalive);
      if (p.presharedKey.trim()) peer.presharedKey = p.presharedKey.trim();
      return peer;
    });
    toppings.wireguard = w;
  }
  if (s.cluster.enabled) {
    const c = { server: s.cluster.server.trim(), token: s.cluster.token.trim() };
    if (s.cluster.caHash.trim()) c.caHash = s.cluster.caHash.trim();
    toppings.cluster = c;
  }
  if (Object.keys(toppings).length) spec.toppings = toppings;
  const sec = s.security;
  if (sec.trustedBoot || sec.encryption !== 'none' || sec.keys) {
    spec.security = { trustedBoot: sec.trustedBoot, encryption: sec.encryption };
    if (sec.keys) spec.security.keys = `keysets/${sec.keys}`;
  }
  spec.artifacts = [...s.artifacts];
  if (s.cloudConfig.trim()) {
    spec.cloudConfig = CLOUD_CONFIG_FILE;
    files[CLOUD_CONFIG_FILE] = s.cloudConfig;
  }
  if (s.compression) {
    spec.compression = { algorithm: s.compression };
    if (s.compressionLevel !== null && s.compressionLevel !== undefined) spec.compression.level = s.compressionLevel;
  }
  return { spec, files };
}

export function normalPath(p) {
  return String(p).replace(/^(\.\/)+/, '').replace(/\/+$/, '');
}

// A state showing a spec parsed from JSON, with its files; the base is kept as a custom
// reference (the wizard shows it as a template when one has that base).
export function stateFromSpec(spec, files) {
  const s = emptyState();
  const extras = {};
  for (const [k, v] of Object.entries(spec)) if (!EDITED_KEYS.includes(k)) extras[k] = v;
  s.extras = extras;
  s.baseMode = 'custom';
  s.customBase = String(spec.base || '');
  s.version = String(spec.version ?? '');
  const k = spec.kubernetes;
  if (k && typeof k === 'object' && k.distribution && k.distribution !== 'none') {
    s.k8s = { distribution: k.distribution, version: String(k.version ?? ''), binary: String(k.binary ?? ''), sha256: String(k.sha256 ?? ''), binaryEdited: true };
  }
  if (Array.isArray(spec.packages)) s.packages = spec.packages.join(' ');
  const t = spec.toppings || {};
  for (const p of [].concat(t.manifests || [])) {
    const path = normalPath(p);
    const fileKeys = Object.keys(files);
    const exact = fileKeys.find((f) => normalPath(f) === path);
    if (exact !== undefined) {
      s.manifests.push({ name: path.split('/').pop(), content: files[exact] });
      continue;
    }
    // A directory: its *.yaml, *.yml and *.json files, sorted by name.
    const inside = fileKeys.filter((f) => normalPath(f).startsWith(path + '/') && !normalPath(f).slice(path.length + 1).includes('/') && /\.(ya?ml|json)$/.test(f)).sort();
    if (inside.length) for (const f of inside) s.manifests.push({ name: normalPath(f).split('/').pop(), content: files[f] });
    else s.manifests.push({ name: path.split('/').pop(), content: '' });
  }
  if (t.wireguard) {
    const w = t.wireguard;
    s.wireguard = {
      enabled: true, interface: String(w.interface ?? 'wg0'), address: [].concat(w.address || []).join(', '),
      listenPort: w.listenPort == null ? '' : String(w.listenPort), privateKey: String(w.privateKey ?? ''),
      peers: (w.peers || []).map((p) => ({
        publicKey: String(p.publicKey ?? ''), endpoint: String(p.endpoint ?? ''), allowedIPs: [].concat(p.allowedIPs || []).join(', '),
        persistentKeepalive: p.persistentKeepalive == null ? '' : String(p.persistentKeepalive), presharedKey: String(p.presharedKey ?? ''),
      })),
    };
    if (!s.wireguard.peers.length) s.wireguard.peers.push(emptyPeer());
  }
  if (t.cluster) s.cluster = { enabled: true, server: String(t.cluster.server ?? ''), token: String(t.cluster.token ?? ''), caHash: String(t.cluster.caHash ?? '') };
  const sec = spec.security || {};
  s.security = { trustedBoot: sec.trustedBoot === true, encryption: sec.encryption || 'none', keys: sec.keys ? normalPath(sec.keys).replace(/^keysets\//, '') : '' };
  if (Array.isArray(spec.artifacts)) s.artifacts = spec.artifacts.map(String);
  if (spec.cloudConfig) {
    const path = normalPath(spec.cloudConfig);
    const key = Object.keys(files).find((f) => normalPath(f) === path);
    s.cloudConfig = key === undefined ? '' : files[key];
  }
  const c = spec.compression;
  if (typeof c === 'string') s.compression = c;
  else if (c && typeof c === 'object') {
    s.compression = c.algorithm || '';
    s.compressionLevel = c.level ?? null;
  }
  return s;
}
