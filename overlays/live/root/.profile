# Live system only: the installer starts by itself on tty1, and on ttyS0 when the serial
# boot entry (martlet.serial) was chosen. Unattended installs (martlet.answer=) run as
# martlet-unattended.service instead. Leaving the installer gives this shell.
[ -f /etc/martlet/live ] || return 0
tty=$(tty)
cmdline=$(cat /proc/cmdline)
case " $cmdline " in *" martlet.answer="*) return 0 ;; esac
if [ "$tty" = /dev/tty1 ] || { [ "$tty" = /dev/ttyS0 ] && case " $cmdline " in *" martlet.serial "*) true ;; *) false ;; esac; }; then
    if [ ! -e /run/martlet/installer-started-${tty##*/} ]; then
        touch /run/martlet/installer-started-${tty##*/}
        /usr/bin/martlet-installer
        echo "martlet-installer exited ($?). Run 'martlet-installer' to start it again."
    fi
fi
