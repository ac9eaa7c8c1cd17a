# A Debian 12 or 13 "EC2 instance": systemd as PID 1, sshd with key-only login, user `admin` with
# passwordless sudo (as on Debian's official AMIs). The authorized key is written at start.
ARG BASE
FROM ${BASE}
ENV container=docker
COPY sshd-pynet.conf /etc/ssh/sshd_config.d/10-pynet-harness.conf
COPY ssh-hostkeys.conf /etc/systemd/system/ssh.service.d/hostkeys.conf
COPY docker-harness.conf /etc/systemd/system/docker.service.d/pynet-harness.conf
COPY harness-no-metadata.service /etc/systemd/system/pynet-harness-no-metadata.service
RUN useradd --create-home --shell /bin/bash --groups sudo admin \
 && echo 'admin ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/90-cloud-init-users \
 && chmod 0440 /etc/sudoers.d/90-cloud-init-users \
 && install -d -m 0700 -o admin -g admin /home/admin/.ssh \
 && rm -f /etc/ssh/ssh_host_* \
 && systemctl enable ssh.service pynet-harness-no-metadata.service \
 && systemctl mask systemd-udevd.service systemd-udevd-kernel.socket \
      systemd-udevd-control.socket systemd-udev-trigger.service getty.target \
      console-getty.service systemd-remount-fs.service sys-kernel-config.mount \
      sys-kernel-debug.mount sys-kernel-tracing.mount systemd-firstboot.service \
      systemd-modules-load.service \
 && : > /etc/machine-id
STOPSIGNAL SIGRTMIN+3
CMD ["/lib/systemd/systemd"]
