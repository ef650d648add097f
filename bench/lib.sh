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
