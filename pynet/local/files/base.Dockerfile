# Debian 12 from a debootstrap tree: the stand-in for a registry's base image.
FROM scratch
ADD rootfs.tar /
ENV LANG=C.UTF-8
CMD ["/bin/bash"]
