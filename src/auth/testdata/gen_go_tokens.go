// Generates go-tokens.txt with the golang-jwt that etcd uses (Debian package, GOPATH mode):
//   GO111MODULE=off GOPATH=/usr/share/gocode go run testdata/gen_go_tokens.go > testdata/go-tokens.txt
// Run from /work/scratch/jwt.
//go:build ignore

package main

import (
	"fmt"
	"io/ioutil"

	"github.com/golang-jwt/jwt"
)

func main() {
	d := "testdata/"
	rsaPEM, _ := ioutil.ReadFile(d + "server.key.insecure")
	ecPEM, _ := ioutil.ReadFile(d + "server-ecdsa.key.insecure")
	rk, err := jwt.ParseRSAPrivateKeyFromPEM(rsaPEM)
	if err != nil { panic(err) }
	ek, err := jwt.ParseECPrivateKeyFromPEM(ecPEM)
	if err != nil { panic(err) }
	claims := jwt.MapClaims{"username": "root<&>\"é", "revision": uint64(42), "exp": int64(2000000000)}
	for _, c := range []struct{ m jwt.SigningMethod; k interface{} }{
		{jwt.SigningMethodRS256, rk}, {jwt.SigningMethodPS256, rk}, {jwt.SigningMethodES256, ek}, {jwt.SigningMethodHS256, ecPEM},
	} {
		s, err := jwt.NewWithClaims(c.m, claims).SignedString(c.k)
		if err != nil { panic(err) }
		fmt.Printf("%s %s\n", c.m.Alg(), s)
	}
}
