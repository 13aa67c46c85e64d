//! Compiles `proto/` with protox (a protobuf compiler in Rust) and prost: nothing to
//! install, no system `protoc`.

fn main() {
    let files = [
        "etcd/api/mvccpb/kv.proto",
        "etcd/api/authpb/auth.proto",
        "etcd/api/etcdserverpb/rpc.proto",
        "etcd/server/etcdserver/api/v3lock/v3lockpb/v3lock.proto",
        "etcd/server/etcdserver/api/v3election/v3electionpb/v3election.proto",
        "grpc/health/v1/health.proto",
        "keel/internal.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(files, ["proto"]).expect("proto/ compiles");
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(fds)
        .expect("prost generates code for proto/");
}
