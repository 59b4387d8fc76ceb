import MartletInstallerCommands

MartletInstallerCommand.main()
