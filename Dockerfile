# Plugin Host in a container.
#
# The host runs as root INSIDE the container so each plugin gets its own uid; plugins never run as root.
# Which sandbox layers work depends on how the container is started (`host doctor` prints it at start):
#
#   docker run -p 8000:8000 -v plugin-host:/var/lib/plugin-host plugin-host
#       Default Docker: its seccomp profile blocks namespaces, so bubblewrap is unavailable and the runner
#       uses the pure-syscall layers (Landlock, seccomp, rlimits, per-plugin uid). In the default strict
#       mode a plugin whose policy needs a missing layer does not start and says why; add
#       `-e HOST_SANDBOX=weak` to run with the layers that exist (logged loudly).
#
#   docker run --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
#              --cap-add SYS_ADMIN --cgroupns=host -v /sys/fs/cgroup:/sys/fs/cgroup:rw \
#              -p 8000:8000 -v plugin-host:/var/lib/plugin-host plugin-host
#       Every layer: bubblewrap namespaces (net, pid, mount, ipc, uts), cgroup memory/pids/cpu limits.
#       (SYS_ADMIN is needed by bubblewrap to build the mount namespace; plugins themselves hold no
#       capabilities.) The disk quota, an ext4 image per plugin loop-mounted on its data dir, also needs
#       loop devices: add --device /dev/loop-control and one --device /dev/loopN per plugin (the host's
#       /dev/loop0, /dev/loop1, ...); without them the `disk` layer is missing.
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends libseccomp2 ca-certificates e2fsprogs \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/plugin-host
COPY pyproject.toml README.md ./
COPY host ./host
COPY manifests ./manifests
COPY sandbox_runner ./sandbox_runner
COPY plugins ./plugins
RUN pip install --no-cache-dir . && host --help > /dev/null

ENV HOST_HOME=/var/lib/plugin-host \
    HOST_BIND=0.0.0.0:8000
VOLUME /var/lib/plugin-host
EXPOSE 8000

# Probe the sandbox first (its report goes to the container log), install the bundled plugins once,
# then serve. `exec` makes the supervisor PID 1's replacement so SIGTERM stops everything cleanly.
CMD ["sh", "-c", "host doctor; for p in /opt/plugin-host/plugins/*/; do host install \"$p\" --yes || exit 1; done; exec host serve --bind \"$HOST_BIND\""]
