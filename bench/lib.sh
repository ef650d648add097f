# Shared by the bench/ scripts; source it, don't run it.

# apt_install PKG...: install Debian packages (apt-get update once per
# script). NO_INSTALL=1 refuses, so a run never changes the machine.
apt_updated=0
apt_install() {
	[[ ${NO_INSTALL:-0} == 1 ]] && return 1
	local sudo=""
	if [[ $(id -u) != 0 ]]; then
		command -v sudo >/dev/null || return 1
		sudo="sudo"
	fi
	if [[ $apt_updated == 0 ]]; then
		timeout 300 $sudo apt-get update -qq >&2 || return 1
		apt_updated=1
	fi
	DEBIAN_FRONTEND=noninteractive timeout 600 $sudo apt-get install -y -qq --no-install-recommends "$@" >&2
}

# write_results FILE NAME BLOCK: put the contents of file BLOCK (which starts
# with <!-- NAME:begin --> and ends with <!-- NAME:end -->) into FILE in place
# of its old NAME block, or append it; other text in FILE is kept.
write_results() {
	local file=$1 name=$2 block=$3
	if [[ -f $file ]] && grep -q "<!-- $name:begin -->" "$file" && grep -q "<!-- $name:end -->" "$file"; then
		awk -v block="$block" -v b="<!-- $name:begin -->" -v e="<!-- $name:end -->" '
			$0 == b { while ((getline l < block) > 0) print l; skip = 1; next }
			$0 == e { skip = 0; next }
			!skip { print }' "$file" >"$file.new" && mv "$file.new" "$file"
	elif [[ -f $file ]]; then
		{ echo; cat "$block"; } >>"$file"
	else
		mkdir -p "$(dirname "$file")"
		{ echo "# Benchmark results"; echo; cat "$block"; } >"$file"
	fi
}

# medians FILE UNIT: for go test -bench output in FILE, print "name median"
# of the metric UNIT (e.g. ns/op, syncs/s) per benchmark name. (mawk, the
# default awk on Debian, has no asort, hence sort.)
medians() {
	awk -v unit="$2" '/^Benchmark/ {
		name=$1; sub(/-[0-9]+$/, "", name)
		for (i = 3; i < NF; i++) if ($(i+1) == unit) print name, $i
	}' "$1" | sort -k1,1 -k2,2g | awk '
		function flush() { if (k) print cur, (k % 2) ? a[(k+1)/2] : (a[k/2] + a[k/2+1]) / 2 }
		$1 != cur { flush(); cur = $1; k = 0 }
		{ a[++k] = $2 }
		END { flush() }'
}
