//! Compiles `proto/` with protox (a protobuf compiler in Rust) and prost: nothing to
//! install, no system `protoc`. pbjson-build adds serde impls for etcd's packages, in
//! grpc-gateway's JSON mapping (proto field names out, both spellings in), for the gateway.

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
    let descriptors = prost::Message::encode_to_vec(&fds);
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(fds)
        .expect("prost generates code for proto/");
    // etcd's gateway (grpc-gateway v1, `JSONPb{OrigName: true}`) ignores unknown fields.
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)
        .expect("descriptors decode")
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .build(&[
            ".mvccpb",
            ".authpb",
            ".etcdserverpb",
            ".v3lockpb",
            ".v3electionpb",
        ])
        .expect("pbjson generates serde impls for proto/");
}
