// Node etcd3 (grpc-js) logging in to a Keel member with auth on: user `interop`
// (password `interop-pw`) may read and write keys under `auth/` only.
//
// usage: node node_auth.js HOST:PORT   (exit 0 and "node etcd3 auth: N checks passed")
const { Etcd3 } = require('etcd3');

const host = process.argv[2];
let checks = 0;
function check(cond, what) {
  if (!cond) {
    console.log(`node etcd3 auth: FAILED: ${what}`);
    process.exit(1);
  }
  checks++;
}
async function refused(p, words) {
  try {
    await p();
  } catch (e) {
    return String(e.message || e).includes(words);
  }
  return false;
}

(async () => {
  const c = new Etcd3({ hosts: `http://${host}`, auth: { username: 'interop', password: 'interop-pw' } });
  await c.put('auth/node').value('1');
  check((await c.get('auth/node').string()) === '1', 'put and get under auth/');
  check(await refused(() => c.put('other').value('x'), 'permission denied'), 'put outside auth/ refused');
  check(await refused(() => c.get('other').string(), 'permission denied'), 'get outside auth/ refused');
  const bad = new Etcd3({ hosts: `http://${host}`, auth: { username: 'interop', password: 'bad' } });
  check(await refused(() => bad.get('auth/node').string(), 'authentication failed'), 'a wrong password refused');
  bad.close();
  c.close();
  console.log(`node etcd3 auth: ${checks} checks passed`);
  process.exit(0);
})().catch((e) => {
  console.log(`node etcd3 auth: FAILED: ${e.stack || e}`);
  process.exit(1);
});
