# The twistd plugin of esmtpkit. It must stay this cheap: Twisted imports
# every plugin module when it rebuilds its plugin cache, so nothing here may
# import the reactor (esmtpkit.server.tap is imported only when the plugin is used).

from twisted.application.service import ServiceMaker

esmtpkit = ServiceMaker(
    "esmtpkit",
    "esmtpkit.server.tap",
    "A programmable ESMTP server (esmtpkit)",
    "esmtpkit",
)
