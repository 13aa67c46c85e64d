// Node etcd3 (grpc-js) against a Keel endpoint: KV, txn-style if, errors, status, members,
// watch.
// usage: node node_etcd3.js HOST:PORT   (exit 0 and "node etcd3: N checks passed")
// With KEEL_TLS_DIR set, over mutual TLS: ca.pem, client.pem and client-key.pem from there.
const fs = require('fs');
const { Etcd3 } = require('etcd3');

const tls = process.env.KEEL_TLS_DIR;
const options = () => (tls
  ? {
    hosts: `https://${process.argv[2]}`,
    credentials: {
      rootCertificate: fs.readFileSync(`${tls}/ca.pem`),
      certChain: fs.readFileSync(`${tls}/client.pem`),
      privateKey: fs.readFileSync(`${tls}/client-key.pem`),
    },
  }
  : { hosts: `http://${process.argv[2]}` });
const client = new Etcd3(options());
let checks = 0;
function check(cond, what) {
  if (!cond) {
    console.log(`node etcd3: FAILED: ${what}`);
    process.exit(1);
  }
  checks += 1;
}

(async () => {
  await client.put('js/a').value('1');
  await client.put('js/b').value('2');
  check((await client.get('js/a').string()) === '1', 'get js/a');
  const keys = await client.getAll().prefix('js/').keys();
  check(JSON.stringify(keys) === '["js/a","js/b"]', `prefix keys ${keys}`);
  const res = await client.if('js/a', 'Value', '==', '1').then(client.put('js/a').value('one')).commit();
  check(res.succeeded, 'txn succeeded');
  check((await client.get('js/a').string()) === 'one', 'txn applied');
  const del = await client.delete().key('js/b');
  check(del.deleted === '1', `deleted ${del.deleted}`);
  const status = await client.maintenance.status({});
  check(status.version.startsWith('3.4'), `version ${status.version}`);
  const members = await client.cluster.memberList({});
  check(members.members.length === Number(process.env.KEEL_MEMBERS || 1), 'members');
  let err = null;
  try {
    await client.get('js/a').revision(1000000).string();
  } catch (e) {
    err = e;
  }
  check(err && /future revision/.test(err.message), `future revision error: ${err && err.message}`);
  // Watch: live put and delete on a prefix, then history from a revision.
  const watcher = await client.watch().prefix('js/w').create();
  const seen = [];
  const done = new Promise((resolve) => {
    watcher.on('put', (kv) => { seen.push(`put ${kv.key.toString()}=${kv.value.toString()}`); if (seen.length === 2) resolve(); });
    watcher.on('delete', (kv) => { seen.push(`delete ${kv.key.toString()}`); if (seen.length === 2) resolve(); });
  });
  await client.put('js/w1').value('v');
  await client.delete().key('js/w1');
  await Promise.race([done, new Promise((r) => setTimeout(r, 5000))]);
  check(seen.join(',') === 'put js/w1=v,delete js/w1', `watch events ${seen}`);
  await watcher.cancel();
  const start = Number((await client.put('js/h').value('1')).header.revision);
  await client.put('js/h').value('2');
  const replay = await client.watch().key('js/h').startRevision(String(start)).create();
  const values = [];
  await Promise.race([
    new Promise((resolve) => replay.on('put', (kv) => { values.push(kv.value.toString()); if (values.length === 2) resolve(); })),
    new Promise((r) => setTimeout(r, 5000)),
  ]);
  check(values.join(',') === '1,2', `replayed ${values}`);
  await replay.cancel();
  // Leases: grant, attach, keep-alive, revoke; an expired lease deletes its key.
  const lease = client.lease(30, { autoKeepAlive: false });
  const id = await lease.grant();
  await lease.put('js/l').value('leased');
  const kv = (await client.get('js/l').exec()).kvs[0];
  check(kv && kv.lease === id, `key attached to lease ${id}: ${kv && kv.lease}`);
  const ka = await lease.keepaliveOnce();
  check(ka.TTL === '30', `keepalive TTL ${ka.TTL}`);
  const info = await client.leaseClient.leaseTimeToLive({ ID: id, keys: true });
  check(Number(info.TTL) > 0 && info.grantedTTL === '30', `time to live ${info.TTL}/${info.grantedTTL}`);
  check(info.keys.map(String).join() === 'js/l', `lease keys ${info.keys}`);
  const listed = await client.leaseClient.leaseLeases({});
  check(listed.leases.some((l) => l.ID === id), 'lease listed');
  await lease.revoke();
  check((await client.get('js/l').string()) === null, 'revoke deleted the key');
  const short = client.lease(1, { autoKeepAlive: false });
  await short.put('js/s').value('x');
  let gone = false;
  for (let i = 0; i < 50 && !gone; i++) {
    await new Promise((r) => setTimeout(r, 200));
    gone = (await client.get('js/s').string()) === null;
  }
  check(gone, 'expired lease deleted its key');
  // The node client's own lock recipe (lease + txn on create revision).
  const lock = client.lock('js-lock').ttl(10);
  await lock.acquire();
  let second = null;
  try {
    await client.lock('js-lock').ttl(10).acquire();
  } catch (e) {
    second = e;
  }
  check(second !== null, 'second lock refused while held');
  await lock.release();
  const again = await client.lock('js-lock').ttl(10).acquire();
  await again.release();
  // Maintenance (issue 19): hash, defragment, snapshot, alarms.
  const h = await client.maintenance.hash();
  check(typeof h.hash === 'number', 'hash');
  await client.maintenance.defragment();
  const chunks = [];
  await new Promise((resolve, reject) => {
    client.maintenance.snapshot().then((stream) => {
      stream.on('data', (m) => chunks.push(Buffer.from(m.blob)));
      stream.on('end', resolve);
      stream.on('error', reject);
    }, reject);
  });
  const blob = Buffer.concat(chunks);
  check(blob.length % 512 === 32, `snapshot size ${blob.length}`);
  const sha = require('crypto').createHash('sha256').update(blob.subarray(0, blob.length - 32)).digest();
  check(sha.equals(blob.subarray(blob.length - 32)), 'snapshot sha256 trailer');
  const raised = await client.maintenance.alarm({ action: 'Activate', memberID: '0', alarm: 'Nospace' });
  check(raised.alarms.length === 1, 'alarm raised');
  // A client of its own for the refused put: the client's circuit breaker opens on errors.
  const doomed = new Etcd3(options());
  let refused = null;
  try {
    await doomed.put('js/nospace').value('x');
  } catch (e) {
    refused = e;
  }
  doomed.close();
  check(refused !== null && /space exceeded/.test(String(refused)), `put under NOSPACE: ${refused}`);
  await client.maintenance.alarm({ action: 'Deactivate', memberID: '0', alarm: 'Nospace' });
  const left = await client.maintenance.alarm({ action: 'Get', memberID: '0', alarm: 'None' });
  check(left.alarms.length === 0, 'alarm disarmed');
  await client.put('js/nospace').value('x');
  console.log(`node etcd3: ${checks} checks passed${tls ? ' (mutual TLS)' : ''}`);
  client.close();
})().catch((e) => {
  console.log(`node etcd3: FAILED: ${e.stack || e}`);
  process.exit(1);
});
