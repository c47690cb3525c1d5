#!/usr/bin/env bash
# Builds Google's Online Boutique services from upstream's sources into the binary cache,
# so the local substrate can run the real workloads as host processes (issue 20).
#
# Environment:
#   CDCHECK_BOUTIQUE_VERSION   upstream release tag, e.g. v0.10.6 (required)
#   CDCHECK_BOUTIQUE_SRC       a directory holding upstream's src/ (and release/) at that tag
#                              (read only: nothing is written there). Unset: the tag is fetched
#                              from CDCHECK_BOUTIQUE_GIT into the cache and its commit checked
#                              against CDCHECK_BOUTIQUE_COMMIT (both pinned in src/versions.rs)
#   CDCHECK_BIN_CACHE          cache root (default: $HOME/.cache/cdcheck/bin)
#   CDCHECK_BOUTIQUE_SERVICES  space-separated subset to build (default: all listed below)
#   CDCHECK_JAVA_HOME          JDK (>= 21) for adservice (default: the newest JDK >= 21 in /usr/lib/jvm)
#   PYTHON                     interpreter for the Python services' venvs (default: python3)
#   NODE, GO, MVN              tools (default: node, go, mvn from PATH)
#
# Output: $CDCHECK_BIN_CACHE/boutique-$CDCHECK_BOUTIQUE_VERSION/<service>/run, an executable launcher
# that cds to the service's directory (templates/, static/, products.json are read relative to the
# working directory) and execs the service with its interpreter. Configure the service with the
# environment its Kubernetes manifest gives it (PORT, *_SERVICE_ADDR, DISABLE_PROFILER, ...).
# Each service directory gets a .built marker when it is complete, and the version directory a
# .complete marker last; a missing or different marker (RECIPE below changed) means that part is
# rebuilt. A warm cache returns at once. Prints the version directory on stdout, logs on stderr.
#
# Services: Go frontend, checkoutservice, productcatalogservice, shippingservice (go build with
# upstream's Dockerfile flags CGO_ENABLED=0 -ldflags "-s -w", plus -trimpath so that the binaries do
# not depend on where the sources lie); Node currencyservice, paymentservice
# (npm ci --omit=dev); Python emailservice, recommendationservice (venv + pip install -r
# requirements.txt; upstream ships the generated demo_pb2*.py); Java adservice (upstream builds with
# Gradle 8.14.5, whose wrapper download this machine cannot reach, and Debian's gradle is 4.4.1: a
# Maven pom below builds the same sources with build.gradle's dependency versions, except io.grpc
# where the registry lacks 1.82.1 (see ADSERVICE_GRPC); protoc and protoc-gen-grpc-java come from
# Maven Central; JDK >= 21 as build.gradle targets Java 21). cartservice (.NET, NuGet) and loadgenerator/shoppingassistantservice are not built.
set -euo pipefail

: "${CDCHECK_BOUTIQUE_VERSION:?set CDCHECK_BOUTIQUE_VERSION, e.g. v0.10.6}"
CDCHECK_BIN_CACHE="${CDCHECK_BIN_CACHE:-$HOME/.cache/cdcheck/bin}"
ALL_SERVICES="frontend checkoutservice productcatalogservice shippingservice currencyservice paymentservice emailservice recommendationservice adservice"
SERVICES="${CDCHECK_BOUTIQUE_SERVICES:-$ALL_SERVICES}"
PYTHON="${PYTHON:-python3}"
NODE="${NODE:-node}"
GO="${GO:-go}"
MVN="${MVN:-mvn}"

log() { echo "cdcheck install-boutique: $*" >&2; }
die() { log "$*"; exit 1; }

# Bump when the way a service is built changes, so that caches built the old way are rebuilt.
RECIPE=2
version="$CDCHECK_BOUTIQUE_VERSION"
stamp="boutique $version recipe $RECIPE"
out="$CDCHECK_BIN_CACHE/boutique-$version"
marker="$out/.complete"

built() { [[ -x "$out/$1/run" && -f "$out/$1/.built" && "$(head -n1 "$out/$1/.built")" == "$stamp" ]]; }
warm=1
[[ -f "$marker" && "$(cat "$marker")" == "$stamp: $SERVICES" ]] || warm=0
for svc in $SERVICES; do built "$svc" || warm=0; done
if (( warm )); then
  log "Online Boutique $version cached in $out"
  echo "$out"; exit 0
fi

if [[ -n "${CDCHECK_BOUTIQUE_SRC:-}" ]]; then
  src="$(cd "$CDCHECK_BOUTIQUE_SRC" && pwd)"
else
  : "${CDCHECK_BOUTIQUE_GIT:?set CDCHECK_BOUTIQUE_SRC (the upstream sources) or CDCHECK_BOUTIQUE_GIT and CDCHECK_BOUTIQUE_COMMIT}"
  : "${CDCHECK_BOUTIQUE_COMMIT:?set CDCHECK_BOUTIQUE_COMMIT, the commit of tag $CDCHECK_BOUTIQUE_VERSION}"
  src="$CDCHECK_BIN_CACHE/boutique-src-$CDCHECK_BOUTIQUE_VERSION"
  if [[ "$(git -C "$src" rev-parse HEAD 2>/dev/null)" != "$CDCHECK_BOUTIQUE_COMMIT" ]]; then
    rm -rf "$src"
    echo "cdcheck install-boutique: fetching $CDCHECK_BOUTIQUE_GIT at $CDCHECK_BOUTIQUE_VERSION" >&2
    git clone --quiet --depth 1 --branch "$CDCHECK_BOUTIQUE_VERSION" "$CDCHECK_BOUTIQUE_GIT" "$src" >&2 \
      || { echo "cdcheck install-boutique: cannot fetch $CDCHECK_BOUTIQUE_GIT (set CDCHECK_BOUTIQUE_SRC to a copy of its sources at $CDCHECK_BOUTIQUE_VERSION)" >&2; exit 1; }
    got="$(git -C "$src" rev-parse HEAD)"
    [[ "$got" == "$CDCHECK_BOUTIQUE_COMMIT" ]] \
      || { echo "cdcheck install-boutique: tag $CDCHECK_BOUTIQUE_VERSION is commit $got, not the pinned $CDCHECK_BOUTIQUE_COMMIT" >&2; exit 1; }
  fi
fi

[[ -d "$src/src" ]] || die "$src has no src/ directory"
# Upstream's release manifest names its images by tag: a cheap check that the sources are that tag.
if [[ -f "$src/release/kubernetes-manifests.yaml" ]] \
  && ! grep -q "/frontend:$version\$" "$src/release/kubernetes-manifests.yaml"; then
  die "$src/release/kubernetes-manifests.yaml does not name frontend:$version: sources are not $version"
fi

mkdir -p "$out"
rm -f "$marker"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# write_run DIR ENV-LINE COMMAND SUBDIR: writes DIR/run, which cds to DIR/SUBDIR, runs ENV-LINE (shell
# exports, may be empty) and execs COMMAND (already quoted for the shell) with run's arguments.
write_run() {
  local dir="$1" env="$2" cmd="$3"
  cat >"$dir/run" <<EOF
#!/bin/sh
# Online Boutique $version $(basename "$dir"), built by cdcheck's scripts/install-boutique.sh.
cd "\$(dirname "\$0")/$4" || exit 1
$env
exec $cmd "\$@"
EOF
  chmod 0755 "$dir/run"
}

build_go() {
  local svc="$1" dir="$2" gobin
  gobin="$(command -v "$GO")" || die "go not found (set GO)"
  log "$svc: $("$gobin" version)"
  # Same flags as upstream's Dockerfiles; the module cache and build cache are the user's.
  (cd "$src/src/$svc" && CGO_ENABLED=0 nice -n 10 "$gobin" build -trimpath -ldflags="-s -w" -o "$dir/server" .)
  case "$svc" in
    frontend)
      # handlers.go parses templates/*.html, main.go serves ./static/: both relative to the cwd.
      cp -R "$src/src/$svc/templates" "$src/src/$svc/static" "$dir/" ;;
    productcatalogservice)
      # catalog_loader.go reads products.json from the cwd.
      cp "$src/src/$svc/products.json" "$dir/" ;;
  esac
  chmod -R u+w "$dir"
  # shellcheck disable=SC2016 # expanded by run, not here (upstream's images set GOTRACEBACK=single)
  write_run "$dir" 'export GOTRACEBACK="${GOTRACEBACK:-single}"' "./server" "."
}

build_node() {
  local svc="$1" dir="$2" entry="$3" nodebin
  nodebin="$(command -v "$NODE")" || die "node not found (set NODE)"
  log "$svc: node $("$nodebin" --version) at $nodebin (upstream's image builds with Node 20.20.2)"
  mkdir -p "$dir/app"
  # Upstream's image copies the whole folder beside node_modules (server.js, proto/, data/, ...).
  (cd "$src/src/$svc" && tar --exclude=node_modules -cf - .) | (cd "$dir/app" && tar -xf -)
  chmod -R u+w "$dir/app"
  (cd "$dir/app" && nice -n 10 npm ci --omit=dev --no-audit --no-fund --loglevel=error >&2)
  write_run "$dir" "" "$(printf '%q' "$nodebin") $entry" "app"
}

build_python() {
  local svc="$1" dir="$2" entry="$3"
  [[ -f "$src/src/$svc/demo_pb2.py" ]] || die "$svc: upstream's generated demo_pb2.py is missing"
  mkdir -p "$dir/app"
  cp -R "$src/src/$svc/." "$dir/app/"
  chmod -R u+w "$dir/app"
  # The venv is made in place (venvs do not move); run uses its python by absolute path.
  log "$svc: $("$PYTHON" --version 2>&1) (upstream's image uses Python 3.14)"
  "$PYTHON" -m venv "$dir/venv"
  nice -n 10 "$dir/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$dir/app/requirements.txt" >&2
  write_run "$dir" 'export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1' \
    "$(printf '%q' "$dir/venv/bin/python") $entry" "app"
}

find_java_home() {
  if [[ -n "${CDCHECK_JAVA_HOME:-}" ]]; then echo "$CDCHECK_JAVA_HOME"; return; fi
  local best="" bestv=0 j v
  for j in /usr/lib/jvm/*/; do
    j="${j%/}"
    [[ -x "$j/bin/javac" && ! -L "$j" ]] || continue
    v="$("$j/bin/javac" -version 2>&1 | sed -n 's/^javac \([0-9]*\).*/\1/p')"
    [[ -n "$v" ]] && (( v >= 21 && v > bestv )) && { best="$j"; bestv="$v"; }
  done
  [[ -n "$best" ]] || die "adservice needs a JDK >= 21 (build.gradle targets Java 21); set CDCHECK_JAVA_HOME"
  echo "$best"
}

# Versions from upstream's src/adservice/build.gradle at v0.10.6; checked against it below so a
# different tag fails loudly instead of building with stale versions.
ADSERVICE_GRPC_UPSTREAM=1.82.1
# The Maven registry reached here does not serve all of io.grpc 1.82.1: grpc-api, grpc-context,
# grpc-stub, grpc-protobuf, grpc-services and grpc-census 1.82.1 answer "not found", while
# grpc-core/-netty/-util and protoc-gen-grpc-java 1.82.1 are served. So the runtime libraries use
# 1.82.2, the next patch release of the same line, and grpc-census (no 1.82.x served at all; its
# served versions end at 1.81.0; AdService.java does not call it, grpc-core only picks it up by
# reflection for its stats/tracing interceptors) uses 1.81.0. The code generator stays at 1.82.1.
# A machine whose registry serves 1.82.1 can set both variables to it.
ADSERVICE_GRPC="${CDCHECK_ADSERVICE_GRPC_VERSION:-1.82.2}"
ADSERVICE_GRPC_CENSUS="${CDCHECK_ADSERVICE_GRPC_CENSUS_VERSION:-1.81.0}"
ADSERVICE_PROTOBUF=4.35.1
ADSERVICE_JACKSON=2.22.0
ADSERVICE_COMMON_PROTOS=2.72.0
ADSERVICE_LOG4J=2.26.1
ADSERVICE_TCNATIVE=2.0.80.Final

build_java_adservice() {
  local dir="$1" jh w="$work/adservice" g="$src/src/adservice/build.gradle" pin
  for pin in "grpcVersion = \"$ADSERVICE_GRPC_UPSTREAM\"" "protocVersion = \"$ADSERVICE_PROTOBUF\"" \
    "jacksonCoreVersion = \"$ADSERVICE_JACKSON\"" "jacksonDatabindVersion = \"$ADSERVICE_JACKSON\"" \
    "proto-google-common-protos:$ADSERVICE_COMMON_PROTOS\"" "log4j-core:$ADSERVICE_LOG4J\"" \
    "netty-tcnative-boringssl-static:$ADSERVICE_TCNATIVE\"" "javax.annotation-api:1.3.2\"" \
    "VERSION_21"; do
    grep -qF "$pin" "$g" || die "adservice: build.gradle no longer says '$pin': update the pom in $0"
  done
  jh="$(find_java_home)"
  log "adservice: JDK $jh ($("$jh/bin/javac" -version 2>&1)); upstream builds with Temurin 24, runs on Temurin 25"
  mkdir -p "$w"
  cp -R "$src/src/adservice/src" "$w/src"
  chmod -R u+w "$w"
  cat >"$w/pom.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Maven equivalent of upstream's src/adservice/build.gradle (Gradle's application plugin:
     classes + runtime classpath in lib/, main class hipstershop.AdService). -->
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0 https://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>adservice</groupId>
  <artifactId>hipstershop</artifactId>
  <version>0.1.0-SNAPSHOT</version>
  <packaging>jar</packaging>
  <properties>
    <project.build.sourceEncoding>UTF-8</project.build.sourceEncoding>
    <maven.compiler.release>21</maven.compiler.release>
    <grpc.version>$ADSERVICE_GRPC</grpc.version>
    <protobuf.version>$ADSERVICE_PROTOBUF</protobuf.version>
    <jackson.version>$ADSERVICE_JACKSON</jackson.version>
  </properties>
  <dependencyManagement>
    <!-- Gradle resolves a conflict to the highest version, Maven to the nearest declaration: pin
         grpc's shared modules (so grpc-census's older requirements cannot win) and guava (Maven's
         nearest is grpc-api's 33.5.0-android; Gradle takes grpc-services' 33.5.0-jre, the variant
         guava's Gradle metadata selects for a JVM). Every other conflict already resolves to the
         highest version (checked with mvn dependency:tree -Dverbose). -->
    <dependencies>
      <dependency><groupId>com.google.guava</groupId><artifactId>guava</artifactId><version>33.5.0-jre</version></dependency>
      <dependency><groupId>io.grpc</groupId><artifactId>grpc-api</artifactId><version>\${grpc.version}</version></dependency>
      <dependency><groupId>io.grpc</groupId><artifactId>grpc-context</artifactId><version>\${grpc.version}</version></dependency>
      <dependency><groupId>io.grpc</groupId><artifactId>grpc-core</artifactId><version>\${grpc.version}</version></dependency>
      <dependency><groupId>io.grpc</groupId><artifactId>grpc-util</artifactId><version>\${grpc.version}</version></dependency>
    </dependencies>
  </dependencyManagement>
  <dependencies>
    <dependency><groupId>com.google.api.grpc</groupId><artifactId>proto-google-common-protos</artifactId><version>$ADSERVICE_COMMON_PROTOS</version></dependency>
    <dependency><groupId>javax.annotation</groupId><artifactId>javax.annotation-api</artifactId><version>1.3.2</version></dependency>
    <dependency><groupId>io.grpc</groupId><artifactId>grpc-protobuf</artifactId><version>\${grpc.version}</version></dependency>
    <dependency><groupId>io.grpc</groupId><artifactId>grpc-stub</artifactId><version>\${grpc.version}</version></dependency>
    <dependency><groupId>io.grpc</groupId><artifactId>grpc-netty</artifactId><version>\${grpc.version}</version></dependency>
    <dependency><groupId>io.grpc</groupId><artifactId>grpc-services</artifactId><version>\${grpc.version}</version></dependency>
    <dependency><groupId>io.grpc</groupId><artifactId>grpc-census</artifactId><version>$ADSERVICE_GRPC_CENSUS</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$ADSERVICE_LOG4J</version></dependency>
    <dependency><groupId>com.google.protobuf</groupId><artifactId>protobuf-java</artifactId><version>\${protobuf.version}</version></dependency>
    <dependency><groupId>com.fasterxml.jackson.core</groupId><artifactId>jackson-core</artifactId><version>\${jackson.version}</version><scope>runtime</scope></dependency>
    <dependency><groupId>com.fasterxml.jackson.core</groupId><artifactId>jackson-databind</artifactId><version>\${jackson.version}</version><scope>runtime</scope></dependency>
    <dependency><groupId>io.netty</groupId><artifactId>netty-tcnative-boringssl-static</artifactId><version>$ADSERVICE_TCNATIVE</version><scope>runtime</scope></dependency>
  </dependencies>
  <build>
    <extensions>
      <extension><groupId>kr.motd.maven</groupId><artifactId>os-maven-plugin</artifactId><version>1.7.1</version></extension>
    </extensions>
    <plugins>
      <plugin>
        <groupId>org.xolstice.maven.plugins</groupId>
        <artifactId>protobuf-maven-plugin</artifactId>
        <version>0.6.1</version>
        <configuration>
          <protocArtifact>com.google.protobuf:protoc:\${protobuf.version}:exe:\${os.detected.classifier}</protocArtifact>
          <pluginId>grpc-java</pluginId>
          <pluginArtifact>io.grpc:protoc-gen-grpc-java:$ADSERVICE_GRPC_UPSTREAM:exe:\${os.detected.classifier}</pluginArtifact>
        </configuration>
        <executions>
          <execution><goals><goal>compile</goal><goal>compile-custom</goal></goals></execution>
        </executions>
      </plugin>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-compiler-plugin</artifactId>
        <version>3.13.0</version>
      </plugin>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-jar-plugin</artifactId>
        <version>3.4.2</version>
      </plugin>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-resources-plugin</artifactId>
        <version>3.3.1</version>
      </plugin>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-surefire-plugin</artifactId>
        <version>3.5.2</version>
      </plugin>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>3.8.1</version>
        <executions>
          <execution>
            <id>runtime-classpath</id>
            <phase>package</phase>
            <goals><goal>copy-dependencies</goal></goals>
            <configuration>
              <includeScope>runtime</includeScope>
              <outputDirectory>\${project.build.directory}/lib</outputDirectory>
            </configuration>
          </execution>
        </executions>
      </plugin>
    </plugins>
  </build>
</project>
EOF
  (cd "$w" && JAVA_HOME="$jh" nice -n 10 "$MVN" -B -q -Dstyle.color=never -DskipTests package >&2)
  mkdir -p "$dir/lib"
  cp "$w/target/hipstershop-0.1.0-SNAPSHOT.jar" "$w"/target/lib/*.jar "$dir/lib/"
  cp "$w/pom.xml" "$dir/pom.xml"   # kept as a record of what was built
  # Like the start script Gradle's CreateStartScripts writes (bin/AdService): JAVA_OPTS and
  # AD_SERVICE_OPTS are passed to the JVM, word-split, no default JVM options.
  write_run "$dir" "" "$(printf '%q' "$jh/bin/java") \$JAVA_OPTS \$AD_SERVICE_OPTS -cp 'lib/*' hipstershop.AdService" "."
}

for svc in $SERVICES; do
  dir="$out/$svc"
  if built "$svc"; then log "$svc: cached"; continue; fi
  rm -rf "$dir"; mkdir -p "$dir"
  log "$svc: building"
  start=$SECONDS
  case "$svc" in
    frontend|checkoutservice|productcatalogservice|shippingservice) build_go "$svc" "$dir" ;;
    currencyservice) build_node "$svc" "$dir" server.js ;;
    paymentservice) build_node "$svc" "$dir" index.js ;;
    emailservice) build_python "$svc" "$dir" email_server.py ;;
    recommendationservice) build_python "$svc" "$dir" recommendation_server.py ;;
    adservice) build_java_adservice "$dir" ;;
    *) die "unknown or unsupported service: $svc" ;;
  esac
  printf '%s\nbuilt %s\n' "$stamp" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$dir/.built"
  log "$svc: built in $((SECONDS - start)) s ($(du -sh "$dir" | cut -f1))"
done

echo "$stamp: $SERVICES" >"$marker"
log "Online Boutique $version built into $out"
echo "$out"
