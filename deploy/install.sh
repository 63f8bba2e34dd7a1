#!/usr/bin/env bash
# Install (or remove) expllm from this unpacked bundle. Run as root on the board:
#   sudo ./install.sh            # install or upgrade; does not start anything
#   sudo ./install.sh --start    # … and enable + start the service now
#   sudo ./install.sh --uninstall
#   ./install.sh --root DIR      # install the files under DIR only (no user, no systemctl)
# Layout: /opt/expllm/{bin,models,share}, /usr/local/bin/expllm (link), /etc/expllm/config.toml
# and /etc/expllm/mqtt.env (kept if present: yours win over the bundle's), system user `expllm`
# (group `video`), /etc/systemd/system/expllm.service.
set -euo pipefail

usage() { sed -n '2,9s/^# \{0,1\}//p' "$0"; }
here="$(cd "$(dirname "$(readlink -f "$0")")" && pwd)"
start=0 uninstall=0 root=""
while (($#)); do
    case "$1" in
        --start) start=1 ;;
        --uninstall) uninstall=1 ;;
        --root) root="${2:?error: --root needs a directory}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "error: unknown option $1 (see ./install.sh --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ -n "$root" ] && ((start)); then
    echo "error: --start cannot be used with --root" >&2; exit 2
fi
opt="$root/opt/expllm" etc="$root/etc/expllm" unit="$root/etc/systemd/system/expllm.service"
link="$root/usr/local/bin/expllm"
system=1
[ -z "$root" ] || system=0
if ((system)) && [ "$(id -u)" != 0 ]; then
    echo "error: run as root (sudo ./install.sh)" >&2; exit 1
fi
say() { echo "install: $*" >&2; }

if ((uninstall)); then
    if ((system)); then
        systemctl disable --now expllm.service 2>/dev/null || true
    fi
    rm -f "$unit" "$link"
    rm -rf "$opt"
    if ((system)); then
        systemctl daemon-reload
        if id expllm >/dev/null 2>&1; then userdel expllm; fi
    fi
    say "removed $opt, $unit, $link and the user expllm; kept $etc (delete it yourself)"
    exit 0
fi

# Check that this machine can run the binary before touching anything.
if ((system)); then
    [ "$(uname -m)" = aarch64 ] ||
        { echo "error: this bundle is for aarch64 (64-bit ARM); this machine is $(uname -m)" >&2; exit 1; }
    need="$(sed -n 's/^glibc=//p' "$here/share/BUILDINFO")"
    have="$(getconf GNU_LIBC_VERSION | awk '{print $2}')"
    if [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -n1)" != "$need" ]; then
        echo "error: bin/expllm needs glibc $need or newer; this system has $have (see share/README)" >&2
        exit 1
    fi
fi
(cd "$here" && sha256sum --quiet -c SHA256SUMS) ||
    { echo "error: the bundle's files do not match SHA256SUMS (copy it again)" >&2; exit 1; }

was_active=0
if ((system)) && systemctl is-active --quiet expllm.service; then
    was_active=1
    say "stopping the running service for the upgrade"
    systemctl stop expllm.service
fi

mkdir -p "$opt" "$etc" "$(dirname "$unit")" "$(dirname "$link")"
rm -rf "${opt:?}/bin" "${opt:?}/models" "${opt:?}/share"
cp -R "$here/bin" "$here/models" "$here/share" "$opt/"
chmod -R u=rwX,go=rX "$opt"
chmod 755 "$opt/bin/expllm" "$opt/bin/expllm-service"
ln -sfn /opt/expllm/bin/expllm "$link"
install -m 644 "$here/expllm.service" "$unit"
for f in config.toml mqtt.env; do
    if [ -e "$etc/$f" ]; then
        say "kept $etc/$f (the bundle's is $opt/share/$f)"
    else
        install -m 644 "$here/$f" "$etc/$f"
        say "installed $etc/$f"
    fi
done

if ((system)); then
    getent group video >/dev/null || groupadd --system video
    if id expllm >/dev/null 2>&1; then
        usermod -a -G video expllm
    else
        useradd --system --user-group --groups video --home-dir /nonexistent --no-create-home \
            --shell /usr/sbin/nologin expllm
        say "created the system user expllm (group video)"
    fi
    systemctl daemon-reload
    if ((start)); then
        systemctl enable --now expllm.service
        say "enabled and started expllm.service (journalctl -u expllm -f)"
    elif ((was_active)); then
        systemctl start expllm.service
        say "restarted expllm.service"
    else
        say "start it with: sudo systemctl enable --now expllm"
    fi
fi
say "installed expllm $(sed -n 's/^version=//p' "$here/share/BUILDINFO") into ${root:-/}: $opt, $etc, $unit, $link"
